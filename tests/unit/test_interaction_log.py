"""The interaction logger's spool and the JSONL import, on real SQLite and PostgreSQL warehouses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from ftops.serving import interaction_log
from ftops.serving.interaction_log import InteractionLogger, SpoolFullError
from ftops.serving.log_import import import_jsonl
from ftops.serving.spool_rows import MAX_USER_ID_CHARS, check_row
from ftops.warehouse.schema import curation_tables, ensure_schema, log_tables

DOWN_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, str]]:
    """A real warehouse with the interaction tables; a table name of its own on the shared PostgreSQL."""
    table = f"il_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    else:
        engine = sa.create_engine(request.getfixturevalue("postgres_url"))
    ensure_schema(engine, table)
    yield engine, table
    _, interactions, quarantine, _ = log_tables(table)
    for t in (interactions, quarantine, curation_tables(table)[1]):
        t.drop(engine, checkfirst=True)
    engine.dispose()


def _row(i: int, **extra: object) -> dict[str, object]:
    return {"task_type": "summarization", "prompt": f"p{i}", "response": f"r{i}", "model_version": "ftops-x/1",
            "success": True, "latency_ms": 12, "tokens_used": 30, **extra}  # fmt: skip


def _ids(engine: sa.Engine, table: str) -> list[str]:
    _, t, _, _ = log_tables(table)
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(t.c.id)))


def test_rows_reach_the_warehouse_once(warehouse: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = warehouse
    with InteractionLogger(engine, table, tmp_path / "spool") as logger:
        ids = [logger.log(**_row(i)) for i in range(25)]
        given = logger.log(**_row(99, id="chosen-id", user_feedback=4, metadata={"k": [1, 2]},
                                  timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))  # fmt: skip
        assert given == "chosen-id"
        assert logger.spooled() == 26
        assert logger.flush() == 26
        assert logger.flush() == 0
        assert logger.spooled() == 0
        logger.log(**_row(100, id="chosen-id"))  # a repeated id is skipped, not an error that blocks the spool
        assert logger.flush() == 0
    stored = _ids(engine, table)
    assert sorted(stored) == sorted([*ids, "chosen-id"])
    _, t, _, _ = log_tables(table)
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.id == "chosen-id")).mappings().one()
    assert row["user_feedback"] == 4 and json.loads(row["metadata"]) == {"k": [1, 2]} and row["prompt"] == "p99"
    assert row["timestamp"].replace(tzinfo=UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_invalid_rows_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with InteractionLogger(engine, spool_dir=tmp_path / "spool") as logger:
        for bad, message in [({"task_type": "../x"}, "invalid task type"), (_row(1, user_feedback=6), "user_feedback"),
                             (_row(1, colour="red"), "unknown fields"), (_row(1, success="yes"), "success"),
                             (_row(1, latency_ms=-1), "latency_ms"), (_row(1, timestamp="yesterday"), "ISO")]:  # fmt: skip
            with pytest.raises(ValueError, match=message):
                logger.log(**bad)
        assert logger.spooled() == 0


def test_a_down_warehouse_keeps_rows_and_a_later_flush_catches_up(
    warehouse: tuple[sa.Engine, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, table = warehouse
    down = sa.create_engine(DOWN_URL)
    logger = InteractionLogger(down, table, tmp_path / "spool")
    ids = [logger.log(**_row(i)) for i in range(10)]
    assert logger.flush() == 0
    ids += [logger.log(**_row(i)) for i in range(10, 15)]
    assert logger.flush() == 0
    assert logger.spooled() == 15
    assert "10 rows stay spooled" in caplog.text and "Warehouse unavailable: OperationalError" in caplog.text
    assert "15 rows stay spooled" not in caplog.text  # the same cause is logged once, not at every flush
    health = logger.health()
    assert health["spooled_rows"] == 15 and health["rejected_rows"] == 0 and not health["spool_full"]
    assert health["flush_error"].startswith("Warehouse unavailable: OperationalError") and health["last_flush_at"] is None
    logger.engine = engine  # the warehouse is back
    assert logger.flush() == 15
    assert logger.health()["flush_error"] is None and logger.health()["last_flush_at"] is not None
    logger.close()
    assert sorted(_ids(engine, table)) == sorted(ids)


def test_one_logger_per_spool_folder(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with InteractionLogger(engine, spool_dir=tmp_path / "spool"):
        with pytest.raises(RuntimeError, match="in use by another interaction logger"):
            InteractionLogger(engine, spool_dir=tmp_path / "spool")
    InteractionLogger(engine, spool_dir=tmp_path / "spool").close()  # released on close


CHILD = """
import os, signal, sys
import sqlalchemy as sa
from ftops.serving.interaction_log import InteractionLogger

logger = InteractionLogger(sa.create_engine(sys.argv[1]), sys.argv[2], sys.argv[3], flush_rows=10**9)
for i in range(int(sys.argv[4])):
    print(logger.log(task_type="summarization", prompt=f"p{i}", response="r", success=True), flush=True)
with open(os.path.join(sys.argv[3], "active.jsonl"), "ab") as f:
    f.write(b'{"task_type": "summarization", "prom')  # a write cut short: its call was never answered
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_rows_of_a_killed_process_are_replayed_exactly_once(warehouse: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = warehouse
    spool = tmp_path / "spool"
    n = 200
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), engine.url.render_as_string(False), table,
                            str(spool), str(n)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    acknowledged = child.stdout.split()
    assert len(acknowledged) == n and _ids(engine, table) == []
    logger = InteractionLogger(engine, table, spool)
    logger.start()  # replays what the killed process left
    assert sorted(_ids(engine, table)) == sorted(acknowledged)
    logger.close()
    again = InteractionLogger(engine, table, spool)  # nothing left to replay twice
    assert again.replay() == 0
    again.close()
    assert len(_ids(engine, table)) == n


def test_a_segment_inserted_before_a_crash_is_not_duplicated(warehouse: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = warehouse
    spool = tmp_path / "spool"
    logger = InteractionLogger(engine, table, spool)
    ids = [logger.log(**_row(i)) for i in range(7)]
    logger.close()
    # a crash after the insert committed but before the segment was deleted: the segment is back on disk
    (spool / "segment-00000009.jsonl").write_text("".join(json.dumps(check_row(_row(0, id=i))) + "\n" for i in ids))
    with InteractionLogger(engine, table, spool) as replay:
        assert replay.replay() == 0
        assert replay.spooled() == 0
    assert sorted(_ids(engine, table)) == sorted(ids)


def test_threads_logging_at_once_lose_nothing(warehouse: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = warehouse
    logger = InteractionLogger(engine, table, tmp_path / "spool", flush_every_s=0.05, flush_rows=50, batch_rows=40)
    logger.start()
    ids: list[str] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            mine = [logger.log(**_row(i, user_id=f"t{t}")) for i in range(150)]
            ids.extend(mine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    logger.close()
    assert not errors
    stored = _ids(engine, table)
    assert len(stored) == len(set(stored)) == 8 * 150 and set(stored) == set(ids)


def test_import_jsonl_accounts_for_every_line(warehouse: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = warehouse
    ts = "2026-03-01T10:00:00+00:00"
    good = [json.dumps(_row(i, timestamp=ts, id=f"imp-{i}")) for i in range(5)]
    lines = [
        *good,
        json.dumps(_row(7, timestamp=ts)),  # no id: one derived from the content
        good[0],  # the same id again
        "{not json",
        "",
        json.dumps(_row(8, timestamp=ts, user_feedback=9)),
        json.dumps(_row(9)),  # no timestamp
        json.dumps([1, 2]),
        json.dumps(_row(10, timestamp=ts, task_type="bad type")),
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    first = import_jsonl(path, engine, table, batch_rows=2)
    assert (first.lines, first.inserted, first.duplicates) == (13, 6, 1)
    assert [n for n, _ in first.rejected] == [8, 9, 10, 11, 12, 13]
    reasons = dict(first.rejected)
    assert "empty line" in reasons[9] and "user_feedback" in reasons[10] and "timestamp is missing" in reasons[11]
    assert "not a JSON object" in reasons[12] and "invalid task type" in reasons[13]
    assert first.lines == first.inserted + first.duplicates + len(first.rejected)
    second = import_jsonl(path, engine, table)  # a rerun inserts nothing twice
    assert (second.inserted, second.duplicates, len(second.rejected)) == (0, 7, 6)
    assert len(_ids(engine, table)) == 6


def test_an_unreadable_spooled_line_is_kept_aside_once(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    spool = tmp_path / "spool"
    spool.mkdir()
    good = json.dumps(check_row(_row(1)))
    (spool / "segment-00000001.jsonl").write_text(f"{good}\n{{broken\n")
    logger = InteractionLogger(sa.create_engine(DOWN_URL), spool_dir=spool)
    assert logger.flush() == 0 and logger.flush() == 0  # read twice while the warehouse is down
    logger.engine = engine
    assert logger.flush() == 1
    logger.close()
    (entry,) = [json.loads(line) for line in (spool / "rejected.jsonl").read_text().splitlines()]
    assert entry["line"] == "{broken" and entry["segment"] == "segment-00000001.jsonl"
    assert entry["reason"].startswith("unreadable line: JSONDecodeError") and "row" not in entry
    assert len(_ids(engine, "interactions")) == 1


# -- rows no warehouse can store, rows a warehouse refuses, limits ---------------------------------------------


@pytest.mark.parametrize(("bad", "field"), [
    ({"prompt": "say\x00hi"}, "prompt"), ({"user_id": "u\x00"}, "user_id"), ({"prompt": "a\ud800b"}, "prompt"),
    ({"response": "\udfff"}, "response"), ({"model_version": "m\x00"}, "model_version"), ({"id": "id\x00"}, "id"),
    ({"metadata": {"k": "v\x00"}}, "metadata"), ({"metadata": {"\ud800": 1}}, "metadata"),
    ({"metadata": "text\x00"}, "metadata"), ({"task_type": "sum\x00"}, "task_type"),
    ({"user_id": "u" * (MAX_USER_ID_CHARS + 1)}, "user_id"),
])  # fmt: skip
def test_unstorable_text_is_refused_before_anything_is_written(tmp_path: Path, bad: dict[str, object], field: str) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with InteractionLogger(engine, spool_dir=tmp_path / "spool") as logger:
        with pytest.raises(ValueError, match=field) as err:
            logger.log(**_row(1, **bad))
        assert "\x00" not in str(err.value) and "\ud800" not in str(err.value) and "uuu" not in str(err.value)
        assert logger.spooled() == 0 and (tmp_path / "spool" / "active.jsonl").stat().st_size == 0
        assert logger.log(**_row(2, user_id="u" * MAX_USER_ID_CHARS))  # the cap itself is allowed
        assert logger.spooled() == 1


def _checked_table(engine: sa.Engine, table: str) -> None:
    """A user-made interaction table whose user_id must fit 8 characters (SQLite: a CHECK constraint)."""
    ensure_schema(engine, table)
    _, t, _, _ = log_tables(table)
    t.drop(engine)
    cols = ", ".join(f"{c.name} {c.type.compile(engine.dialect)}" for c in t.columns if c.name != "id")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, {cols}, "
                             "CHECK (user_id IS NULL OR length(user_id) <= 8))")  # fmt: skip


def test_a_refused_row_is_set_aside_and_the_others_are_inserted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")  # without hide_parameters: the spool must not leak
    _checked_table(engine, "interactions")
    spool = tmp_path / "spool"
    with InteractionLogger(sa.create_engine(DOWN_URL), spool_dir=spool) as down:  # spooled while the warehouse is down
        ids = [down.log(**_row(i, user_id="u-long-user-id" if i == 3 else f"u{i}", prompt=f"secret prompt {i}"))
               for i in range(10)]  # fmt: skip
    logger = InteractionLogger(engine, spool_dir=spool)
    logger.start()  # a restart with the refused row in the spool: replay sets it aside, nothing raises
    logger.close()
    assert sorted(_ids(engine, "interactions")) == sorted(ids[:3] + ids[4:])
    (entry,) = [json.loads(line) for line in (spool / "rejected.jsonl").read_text().splitlines()]
    assert entry["row"]["id"] == ids[3] and entry["row"]["prompt"] == "secret prompt 3"
    assert entry["reason"].startswith("IntegrityError: CHECK constraint failed") and entry["segment"].startswith("segment-")
    assert not list(spool.glob("segment-*"))
    assert all("secret prompt" not in r.getMessage() and "u-long-user-id" not in r.getMessage() for r in caplog.records)
    with InteractionLogger(engine, spool_dir=spool) as again:
        assert again.flush() == 0 and again.health()["rejected_rows"] == 1 and again.spooled() == 0
    assert len(_ids(engine, "interactions")) == 9
    from ftops.cli import main

    capsys.readouterr()
    assert main(["spool", "--spool-dir", str(spool)]) == 0  # what a person reads: id, when, why; never the text
    out = capsys.readouterr().out
    assert f"{ids[3]}  {entry['rejected_at']}  IntegrityError: CHECK constraint failed" in out
    assert "0 rows spooled" in out and "1 rejected" in out and "secret prompt" not in out and "u-long" not in out


def test_a_missing_table_rejects_nothing(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with InteractionLogger(engine, "nowhere", tmp_path / "spool") as logger:
        ids = [logger.log(**_row(i)) for i in range(5)]
        assert logger.flush() == 0
        health = logger.health()
        assert health["spooled_rows"] == 5 and health["rejected_rows"] == 0
        assert "no such table: nowhere" in health["flush_error"]
        ensure_schema(engine, "nowhere")
        assert logger.flush() == 5 and logger.health()["flush_error"] is None
    assert sorted(_ids(engine, "nowhere")) == sorted(ids)
    assert not (tmp_path / "spool" / "rejected.jsonl").exists()


def test_size_rotation_and_the_cap_while_the_warehouse_is_down(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    logger = InteractionLogger(sa.create_engine(DOWN_URL), spool_dir=spool, segment_bytes=2000, max_bytes=12_000)
    ids = []
    with pytest.raises(SpoolFullError, match="at most 12000"):
        while True:
            ids.append(logger.log(**_row(len(ids))))
    assert logger.flush() == 0
    files = [*spool.glob("segment-*.jsonl"), spool / "active.jsonl"]
    health = logger.health()
    assert len(files) >= 5 and all(f.stat().st_size < 2000 + 400 for f in files)  # rotated by size, not by flush
    assert health["spool_full"] and health["spooled_rows"] == len(ids) == sum(f.read_text().count("\n") for f in files)
    assert health["spool_bytes"] == sum(f.stat().st_size for f in files) <= 12_000
    before = {f: f.stat().st_size for f in files}
    with pytest.raises(SpoolFullError):
        logger.log(**_row(0))
    assert {f: f.stat().st_size for f in files} == before  # nothing written
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    logger.engine = engine  # the warehouse is back: space frees, rows are taken again
    assert logger.flush() == len(ids)
    assert not logger.health()["spool_full"] and logger.health()["spool_bytes"] == 0
    ids.append(logger.log(**_row(99)))
    logger.close()
    assert sorted(_ids(engine, "interactions")) == sorted(ids)
    again = InteractionLogger(engine, spool_dir=spool)  # counted from the files at start
    assert again.spooled() == 0 and again.health()["spool_bytes"] == 0
    again.close()


def test_a_segment_is_streamed_in_batches(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    inserts: list[int] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn: object, cursor: object, statement: str, params: object, context: object, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(len(params) if many else 1)  # type: ignore[arg-type]

    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "segment-00000001.jsonl").write_text("".join(json.dumps(check_row(_row(i))) + "\n" for i in range(1050)))
    with InteractionLogger(engine, spool_dir=spool, batch_rows=100) as logger:
        assert logger.spooled() == 1050
        assert logger.flush() == 1050
    assert inserts == [100] * 10 + [50]  # statements of batch_rows rows: at most that many rows in memory
    assert len(_ids(engine, "interactions")) == 1050


def test_spool_files_are_private(tmp_path: Path) -> None:
    import os
    import stat

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    _checked_table(engine, "interactions")
    spool = tmp_path / "home" / "spool" / "interactions"
    old = os.umask(0)  # the most permissive umask: modes come from chmod, not from it
    try:
        with InteractionLogger(engine, spool_dir=spool) as logger:
            logger.log(**_row(1, user_id="too-long-for-8"))
            logger.log(**_row(2))
            logger.flush()  # a segment, then the rejected file
            logger.log(**_row(3))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in spool.iterdir()}
    finally:
        os.umask(old)
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert modes == {"active.jsonl": 0o600, "spool.lock": 0o600, "rejected.jsonl": 0o600}
    seg = spool / "segment-00000042.jsonl"  # a segment an older version left 0644 is made private at start
    seg.write_text("")
    seg.chmod(0o644)
    spool.chmod(0o755)
    InteractionLogger(engine, spool_dir=spool).close()
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700 and not seg.exists()  # (empty: flushed and deleted)


def test_private_files_and_engines_without_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    from ftops.cli import warehouse_url
    from ftops.registry.models import tracking_uri
    from ftops.warehouse.engines import create_engine

    home = tmp_path / "home"
    monkeypatch.setenv("FTOPS_HOME", str(home))
    for name in ("FTOPS_WAREHOUSE_URL", "AIRFLOW_CONN_FTOPS_WAREHOUSE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    old = os.umask(0)
    try:
        url, store = warehouse_url(), tracking_uri()
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in (home / "warehouse.db", home / "mlflow.db"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    engine = create_engine(url)
    ensure_schema(engine)
    _, t, _, _ = log_tables("interactions")
    with pytest.raises(sa.exc.StatementError) as err, engine.begin() as conn:
        conn.execute(sa.insert(t), [{"id": "x", "task_type": "t", "timestamp": "not a datetime", "prompt": "secret"}])
    assert "secret" not in str(err.value)
    assert store.endswith("mlflow.db")
    assert create_engine("postgresql+psycopg://u@h/db").hide_parameters


def test_a_large_segment_is_never_held_in_memory(tmp_path: Path) -> None:
    import tracemalloc

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    spool = tmp_path / "spool"
    spool.mkdir()
    big = "".join(json.dumps(check_row(_row(i, prompt=f"{i} " + "x" * 4000))) + "\n" for i in range(4000))
    (spool / "segment-00000001.jsonl").write_text(big)  # ~16 MB, as a long outage leaves it
    with InteractionLogger(engine, spool_dir=spool, batch_rows=200) as logger:
        tracemalloc.start()
        try:
            assert logger.flush() == 4000
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # a batch of 200 rows (and SQLAlchemy's statement cache), not the file: the old reader peaked above 2x its size
    assert peak < len(big) / 3, (peak, len(big))
    assert len(_ids(engine, "interactions")) == 4000


def test_import_rejects_a_row_the_warehouse_refuses_and_goes_on(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    _checked_table(engine, "interactions")
    ts = "2026-03-01T10:00:00+00:00"
    lines = [json.dumps(_row(i, timestamp=ts, id=f"imp-{i}", user_id="far-too-long" if i in (2, 5) else "u"))
             for i in range(8)]  # fmt: skip
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = import_jsonl(path, engine, batch_rows=3)
    assert (result.lines, result.inserted, result.duplicates) == (8, 6, 0)
    assert [n for n, _ in result.rejected] == [3, 6]
    assert all("IntegrityError: CHECK constraint failed" in reason for _, reason in result.rejected)
    assert sorted(_ids(engine, "interactions")) == sorted(f"imp-{i}" for i in range(8) if i not in (2, 5))


SHORT_WRITE_CHILD = """
import errno, json, os, resource, signal, sys
import sqlalchemy as sa
from ftops.serving.interaction_log import InteractionLogger

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() returns short, then fails with EFBIG
logger = InteractionLogger(sa.create_engine(sys.argv[1]), spool_dir=sys.argv[2], flush_rows=10**9)
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
ids = []
try:
    while True:
        ids.append(logger.log(task_type="summarization", prompt="p" * 700, response="r", success=True))
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
print(json.dumps({"ids": ids, "spooled": logger.spooled(), "bytes": logger.health()["spool_bytes"]}))
"""


def test_a_short_write_leaves_no_partial_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    child = subprocess.run([sys.executable, "-c", SHORT_WRITE_CHILD, DOWN_URL, str(spool)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert child.returncode == 0, child.stderr
    told = json.loads(child.stdout)
    data = (spool / "active.jsonl").read_bytes()
    row_bytes = len(data) // len(told["ids"])
    # the next row was written in part (up to the 5000-byte limit), then failed: its part is cut off again
    assert data.endswith(b"\n") and 0 < 5000 - len(data) < row_bytes
    assert [json.loads(line)["id"] for line in data.splitlines()] == told["ids"]
    assert told["spooled"] == len(told["ids"]) and told["bytes"] == len(data)


def test_an_outage_does_not_make_the_flusher_spin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past flush_rows every row used to wake the flusher, which parsed a batch of the segment to fail again:
    # an outage took the spool from ~4 000 to ~150 rows/s (benchmarks/bench_spool_outage.py)
    logger = InteractionLogger(sa.create_engine(DOWN_URL), spool_dir=tmp_path / "spool", flush_every_s=3600,
                               flush_rows=100)  # fmt: skip
    parsed = []
    real_check = interaction_log.check_row
    monkeypatch.setattr(interaction_log, "check_row", lambda row, **kw: parsed.append(1) or real_check(row, **kw))
    flushes = []
    real_flush = logger.flush
    monkeypatch.setattr(logger, "flush", lambda: flushes.append(1) or real_flush())
    logger.start()
    for i in range(600):
        logger.log(**_row(i))
    time.sleep(0.5)
    assert len(flushes) <= 3, len(flushes)  # the start's replay and one wake at flush_rows, not one per row
    reads = len(parsed) - 600  # check_row of log() itself: 600
    assert reads <= 200, reads  # after the first failure the flusher asks for a connection before parsing
    assert logger.health()["spooled_rows"] == 600
    logger.close()
