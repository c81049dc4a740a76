"""Bad input through curation: each kind gives a clear error or a quarantine reason, nothing is lost.

Row-level kinds go through ``curate_frame`` next to good rows and must end in quarantine (or a named filter)
with the counts adding up. Batch-level kinds (tables, connections, disks, remotes) go through
``curate_task_type`` on a real SQLite warehouse and a real git + DVC registry.
"""

from __future__ import annotations

import errno
import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes import HashEmbedder, row

from ftops.core.config import CurationConfig, FtopsConfig, StorageConfig
from ftops.curation.curate import curate_frame, examples_of
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.curate import curate_task_type
from ftops.warehouse.schema import ensure_schema, insert_interactions
from ftops.warehouse.state import read_pool

CFG = CurationConfig(min_examples=1, target_size=100, test_split=0.2, burst_top_ratings=5)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
PRIVATE_KEY_HEAD = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7cXr9u0t1mKq2Ww4sZ\n"

# (case, overrides of one row, expected accounting key)
ROW_CASES = [
    ("null prompt", {"prompt": None}, "quarantined:null_prompt"),
    ("NaN response", {"response": float("nan")}, "quarantined:null_response"),
    ("prompt of the wrong type", {"prompt": 12345}, "quarantined:prompt_not_text"),
    ("empty prompt", {"prompt": ""}, "quarantined:empty_prompt"),
    ("whitespace-only response", {"response": " \t\n "}, "quarantined:empty_response"),
    ("NUL byte", {"prompt": "Classify\x00 this"}, "quarantined:nul_byte_in_prompt"),
    ("invalid unicode", {"prompt": "caf\ufffd review"}, "quarantined:invalid_unicode_in_prompt"),
    ("10 MB prompt", {"prompt": "x" * 10_000_000}, "quarantined:prompt_too_long"),
    ("rating out of range", {"user_feedback": 7}, "quarantined:rating_out_of_range"),
    ("negative rating", {"user_feedback": -1}, "quarantined:rating_out_of_range"),
    ("rating as a string", {"user_feedback": "5"}, "quarantined:rating_not_a_number"),
    ("rating as a bool", {"user_feedback": True}, "quarantined:rating_not_a_number"),
    ("fractional rating", {"user_feedback": 4.5}, "quarantined:rating_not_integer"),
    ("infinite rating", {"user_feedback": math.inf}, "quarantined:rating_not_integer"),
    ("negative latency", {"latency_ms": -20}, "quarantined:negative_latency"),
    ("latency as text", {"latency_ms": "fast"}, "quarantined:latency_ms_not_a_number"),
    ("confidence as text", {"confidence": "high"}, "quarantined:confidence_not_a_number"),
    ("success as text", {"success": "yes"}, "quarantined:success_not_boolean"),
    ("null success", {"success": None}, "quarantined:null_success"),
    ("task success as text", {"task_success": "yes"}, "quarantined:task_success_not_boolean"),
    ("the client said it failed", {"task_success": False}, "filtered:task_failed"),
    ("null id", {"id": None}, "quarantined:null_id"),
    ("invalid task type", {"task_type": "../../escape"}, "quarantined:invalid_task_type"),
    ("timestamp in the future", {"timestamp": pd.Timestamp("2027-01-01", tz="UTC")}, "quarantined:timestamp_in_future"),
    ("null timestamp", {"timestamp": None}, "quarantined:null_timestamp"),
    ("timestamp that is not a time", {"timestamp": "yesterday-ish"}, "quarantined:timestamp_not_a_time"),
    ("broken JSON metadata", {"metadata": '{"client": "web",'}, "quarantined:metadata_not_json"),
    ("unterminated private key", {"prompt": "Fix my config:\n" + PRIVATE_KEY_HEAD}, "quarantined:unremovable_secret"),
    ("no rating", {"user_feedback": None}, "filtered:no_rating"),
    ("error text as a response", {"response": "Error: upstream timeout while calling the model backend, retry"},
     "filtered:error_text"),
]  # fmt: skip


def _curate(rows: list[dict], cfg: CurationConfig = CFG, **kwargs):
    result = curate_frame(pd.DataFrame(rows), cfg, HashEmbedder(), future_after=NOW, **kwargs)
    assert result.balanced(), (dict(result.accounting), result.rows_read)
    return result


@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_bad_row_gets_its_reason_and_nothing_is_lost(overrides: dict, expected: str) -> None:
    rows = [row(i) for i in range(6)] + [row(99, **overrides)]
    result = _curate(rows)
    assert result.accounting[expected] == 1
    assert result.accounting["accepted"] == 6
    assert sum(result.accounting.values()) == len(rows)
    if expected.startswith("quarantined:"):
        (bad,) = result.quarantined
        assert bad["reason"] == expected.split(":", 1)[1]
        assert result.reasons.count(bad["reason"]) == 1
        # the stored copy is short, valid text and holds no secret
        assert all(len(v) <= 4000 for v in bad["row"].values() if isinstance(v, str))
        assert "MIIEowIBAAKCAQEA" not in str(bad["row"])
        str(bad["row"]).encode("utf-8")


def test_duplicate_ids_with_different_content_are_all_quarantined() -> None:
    rows = [row(i) for i in range(4)] + [row(7, response="Sentiment: negative. " + "x" * 60), row(7)]
    result = _curate(rows)
    assert result.accounting["quarantined:duplicate_id_conflict"] == 2
    assert {q["row_id"] for q in result.quarantined} == {"r7"}


def test_a_repeated_id_with_the_same_content_is_one_row() -> None:
    result = _curate([row(i) for i in range(4)] + [row(2)])
    assert result.accounting["filtered:duplicate_id"] == 1 and result.accounting["accepted"] == 4


def test_a_burst_of_top_ratings_from_one_user_is_left_out_and_reported() -> None:
    start = pd.Timestamp("2026-11-01 10:00", tz="UTC")
    burst = [row(100 + i, user_id="u-gamer", timestamp=start + pd.Timedelta(seconds=30 * i)) for i in range(6)]
    result = _curate([row(i) for i in range(10)] + burst)
    assert result.accounting["filtered:rating_burst"] == 6
    assert len(result.burst_users) == 1 and "u-gamer" not in result.burst_users[0]  # pseudonymous key


def test_one_user_cannot_fill_the_dataset() -> None:
    cfg = CFG.model_copy(update={"target_size": 20, "max_user_share": 0.1})
    days = [pd.Timestamp("2026-10-01", tz="UTC") + pd.Timedelta(days=i) for i in range(15)]
    heavy = [row(100 + i, user_id="u-heavy", confidence=0.99, timestamp=d) for i, d in enumerate(days)]  # rated first
    result = _curate([row(i) for i in range(30)] + heavy, cfg)
    assert result.accounting["accepted"] == 20
    assert result.accounting["filtered:user_cap"] == 13  # 2 = 10 % of 20 kept, the 13 after them left out
    assert result.max_user_share == pytest.approx(0.1) and list(result.capped_users.values()) == [13]


def test_the_user_cap_keeps_a_users_best_examples_and_counts_nothing_twice() -> None:
    cfg = CFG.model_copy(update={"target_size": 10, "max_user_share": 0.2})
    rows = [row(i, user_id="u-a" if i < 6 else f"u{i}", confidence=1 - i / 100,
                timestamp=pd.Timestamp("2026-10-01", tz="UTC") + pd.Timedelta(days=i)) for i in range(16)]  # fmt: skip
    result = _curate(rows, cfg)
    kept = {p for p, _ in examples_of(result.train + result.test)}
    assert {f"Classify review number {i}: great value" for i in (0, 1)} <= kept  # u-a's two best
    assert result.accounting["filtered:user_cap"] == 4 and result.accounting["accepted"] == 10


def test_zero_rows_left_after_filtering_is_not_a_crash() -> None:
    result = _curate([row(i, user_feedback=1) for i in range(5)])
    assert +result.accounting == {"filtered:low_rating": 5} and result.train == result.test == []


def test_a_frame_without_a_required_column_names_it() -> None:
    frame = pd.DataFrame([row(i) for i in range(3)]).rename(columns={"prompt": "user_prompt"})
    with pytest.raises(KeyError, match=r"missing columns \['prompt'\]"):
        curate_frame(frame, CFG, HashEmbedder())


# -- batch level: a real SQLite warehouse, a real git + DVC registry ------------------------------------
@pytest.fixture
def setup(tmp_path: Path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    cfg = FtopsConfig(
        curation=CFG.model_copy(update={"min_examples": 5}),
        storage=StorageConfig(dataset_repo=str(tmp_path / "datasets"), dvc_remote=str(tmp_path / "remote"),
                              embedding_cache=str(tmp_path / "emb.db")),
    )  # fmt: skip
    return engine, cfg


def _run(engine, cfg, run_key: str = "run-1", **kwargs) -> dict:
    return curate_task_type(engine, cfg, "sentiment", run_key=run_key, now=NOW, embedder=HashEmbedder(), **kwargs)


def _good_rows(n: int, start: int = 0) -> list[dict]:
    return [row(i, timestamp=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=i)) for i in range(start, start + n)]


def test_an_empty_table_makes_no_version(setup) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    assert _run(engine, cfg)["status"] == "no_new_rows"
    assert dataset_registry(cfg).versions("sentiment") == []


def test_a_missing_table_is_a_clear_error(setup) -> None:
    engine, cfg = setup
    with pytest.raises(LookupError, match="table 'interactions' does not exist"):
        _run(engine, cfg)


def test_a_renamed_column_is_a_clear_error(setup) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE interactions RENAME COLUMN user_feedback TO rating")
    with pytest.raises(LookupError, match=r"missing columns \['user_feedback'\] \(renamed\?\)"):
        _run(engine, cfg)


def test_an_unknown_task_type_reads_nothing(setup) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    insert_interactions(engine, _good_rows(10))
    result = curate_task_type(engine, cfg, "no_such_task", run_key="r", now=NOW, embedder=HashEmbedder())
    assert result["status"] == "no_new_rows" and result["rows_read"] == 0


def test_the_warehouse_unreachable_is_a_clear_retryable_error(setup) -> None:
    from ftops.warehouse.schema import WarehouseUnavailableError

    _, cfg = setup
    engine = sa.create_engine("postgresql+psycopg://ftops:s3cret-pw@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2})
    with pytest.raises(WarehouseUnavailableError, match=r"cannot reach the warehouse postgresql\+psycopg://ftops:\*\*\*@") as info:
        curate_task_type(engine, cfg, "sentiment", run_key="r", now=NOW, embedder=HashEmbedder())
    assert "s3cret-pw" not in str(info.value)
    assert isinstance(info.value, ConnectionError)  # not in the no-retry policy: a retry may help


def test_invalid_utf8_stored_in_sqlite_is_quarantined_not_a_crash(setup, tmp_path: Path) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    insert_interactions(engine, _good_rows(40))
    with sqlite3.connect(tmp_path / "warehouse.db") as raw:
        raw.execute("UPDATE interactions SET prompt = CAST(X'636166E92072657669657720' AS TEXT) WHERE id = 'r3'")
    result = _run(engine, cfg)
    assert result["accounting"]["quarantined:invalid_unicode_in_prompt"] == 1
    assert sum(result["accounting"].values()) == result["rows_read"] == 40


def test_a_text_rating_column_in_a_users_table_stops_the_batch_naming_the_reason(setup) -> None:
    from ftops.curation.validation import ValidationFailedError

    engine, cfg = setup
    with engine.begin() as conn:  # a user's table where the rating is text: SQLite stores every rating as '5'
        conn.exec_driver_sql("CREATE TABLE interactions (id TEXT, timestamp TIMESTAMP, task_type TEXT, prompt TEXT, "
                             "response TEXT, user_feedback TEXT, success BOOLEAN, latency_ms INTEGER)")  # fmt: skip
    table = sa.Table("interactions", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{c: r[c] for c in table.c.keys()} for r in _good_rows(8)])
    with pytest.raises(ValidationFailedError, match=r"malformed share 1.00 > ceiling 0.20 \(rating_not_a_number 8\)"):
        _run(engine, cfg)
    assert dataset_registry(cfg).versions("sentiment") == []


def test_too_many_malformed_rows_stop_the_batch_with_a_clear_message(setup) -> None:
    from ftops.curation.validation import ValidationFailedError

    engine, cfg = setup
    ensure_schema(engine)
    rows = _good_rows(40)
    for r in rows[:16]:
        r["latency_ms"] = -5
    insert_interactions(engine, rows)
    with pytest.raises(ValidationFailedError, match="raw_sentiment"):
        _run(engine, cfg)
    assert dataset_registry(cfg).versions("sentiment") == []
    assert _run(engine, cfg.model_copy(update={"curation": cfg.curation.model_copy(
        update={"max_malformed_share": 0.5})}), run_key="run-2")["status"] == "versioned"  # fmt: skip


def test_an_unwritable_dvc_remote_is_a_clear_error_and_a_rerun_versions_once(setup, tmp_path: Path) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    insert_interactions(engine, _good_rows(40))
    blocker = tmp_path / "remote-is-a-file"
    blocker.write_text("not a folder")
    broken = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"dvc_remote": str(blocker / "sub")})})
    with pytest.raises(RuntimeError, match="DVC push of sentiment to the remote .*remote-is-a-file/sub failed"):
        _run(engine, broken)
    assert read_pool(engine, "sentiment") == []  # nothing recorded as done: the next attempt re-reads the rows
    fixed = broken.model_copy(update={"storage": cfg.storage})
    first, again = _run(engine, fixed), _run(engine, fixed)
    assert first["status"] == "versioned" and again["status"] == "unchanged"
    assert [v.tag for v in dataset_registry(cfg).versions("sentiment")] == ["dataset/sentiment/v1"]


def test_a_full_disk_while_writing_is_a_clear_error_and_a_rerun_versions_once(setup, monkeypatch) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    insert_interactions(engine, _good_rows(40))
    real_write = Path.write_text

    def full_disk(self: Path, data: str, *args, **kwargs) -> int:
        if self.name == "test.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        _run(engine, cfg)
    monkeypatch.setattr(Path, "write_text", real_write)
    assert _run(engine, cfg)["status"] == "versioned"
    assert [v.tag for v in dataset_registry(cfg).versions("sentiment")] == ["dataset/sentiment/v1"]


def test_a_timestamp_that_is_not_a_time_in_sqlite_is_quarantined_not_a_crash(setup, tmp_path: Path) -> None:
    engine, cfg = setup
    ensure_schema(engine)
    insert_interactions(engine, _good_rows(40))
    with sqlite3.connect(tmp_path / "warehouse.db") as raw:  # SQLite keeps any text in a DATETIME column
        raw.execute("UPDATE interactions SET timestamp = 'yesterday-ish' WHERE id = 'r3'")
    result = _run(engine, cfg)
    assert result["accounting"]["quarantined:timestamp_not_a_time"] == 1
    assert sum(result["accounting"].values()) == result["rows_read"] == 40
