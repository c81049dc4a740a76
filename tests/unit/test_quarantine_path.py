"""Every kind of bad row through the whole write path, on SQLite and on PostgreSQL, and a task type whose name
would leave its folder.

Rows go into a real log table (a user's: no primary key, every column nullable), ``curate_task_type`` runs
for every task type of the table as the DAG would, and the quarantine table is read back with SQL: each bad
row is there once per run with its reason, a retry of the run replaces its rows, and a new run that re-reads
the window on purpose stores them again under its own key while the first run's stay.

A value the DESIGN schema's typed columns cannot hold (a rating stored as text, a prompt stored as a number...)
goes into a log table whose column for it has the type that holds it, as a user's table might.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes import HashEmbedder, row
from test_bad_input import NOW, ROW_CASES

from ftops.core.config import CurationConfig, FtopsConfig, StorageConfig
from ftops.core.names import InvalidNameError
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.curate import curate_task_type, publish_window, task_types_to_curate
from ftops.warehouse.schema import ensure_schema, insert_interactions, log_tables
from ftops.warehouse.state import watermark

CFG = CurationConfig(min_examples=5, target_size=100, test_split=0.2, burst_top_ratings=5,
                     max_malformed_share=1.0)  # fmt: skip  # every batch here is mostly bad on purpose
DAY = pd.Timestamp("2026-11-01", tz="UTC")

# The column type that holds a case's value where the DESIGN schema's type cannot (None: the DESIGN schema).
COLUMN_FOR = {
    "prompt of the wrong type": ("prompt", sa.Integer),
    "rating as a string": ("user_feedback", sa.Text),
    "rating as a bool": ("user_feedback", sa.Boolean),
    "fractional rating": ("user_feedback", sa.Float),
    "infinite rating": ("user_feedback", sa.Float),
    "latency as text": ("latency_ms", sa.Text),
    "confidence as text": ("confidence", sa.Text),
    "success as text": ("success", sa.Text),
    "task success as text": ("task_success", sa.Text),
    "timestamp that is not a time": ("timestamp", sa.Text),
}
LAYOUTS = sorted({COLUMN_FOR.get(name) for name, *_ in ROW_CASES}, key=str)


def _cases(layout: tuple[str, type] | None) -> list[tuple[str, dict, str]]:
    return [c for c in ROW_CASES if COLUMN_FOR.get(c[0]) == layout]


def _extra_rows() -> list[tuple[dict, str | None]]:
    """Kinds that take several rows, for the DESIGN-typed table: (row, accounting key it must get, if any)."""
    conflict = [row(500, response="Sentiment: negative. " + "x" * 60), row(500)]  # one id, two contents
    repeated = [row(501), row(501)]  # one id, the same content twice: one row, the other filtered
    no_ids = [row(502 + i, id=None) for i in range(3)]  # several null ids in one batch
    burst = [row(600 + i, user_id="u-gamer", timestamp=DAY + pd.Timedelta(seconds=30 * i)) for i in range(5)]
    return ([(r, "quarantined:duplicate_id_conflict") for r in conflict] + [(repeated[0], None),
            (repeated[1], "filtered:duplicate_id")] + [(r, "quarantined:null_id") for r in no_ids]
            + [(r, "filtered:rating_burst") for r in burst])  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request, tmp_path: Path):
    """An engine and a unique log table name (PostgreSQL's state tables are shared by every log table)."""
    table = f"ftops_q_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}"), table
        return
    engine = sa.create_engine(request.getfixturevalue("postgres_url"))
    yield engine, table
    with engine.begin() as conn:
        for suffix in ("", "_quarantine", "_curated"):
            conn.exec_driver_sql(f"drop table if exists {table}{suffix}")
        for shared in ("ftops_curation_runs", "ftops_curation_staged"):
            conn.execute(sa.text(f"delete from {shared} where log_table = :t"), {"t": table})


def _users_log_table(engine: sa.Engine, table: str, layout: tuple[str, type] | None) -> sa.Table:
    """The DESIGN columns without a primary key, all nullable, with one column's type changed by ``layout``."""
    _, design, _, _ = log_tables(table)
    kinds = dict([layout]) if layout else {}
    t = sa.Table(table, sa.MetaData(), *(sa.Column(c.name, kinds.get(c.name, c.type)) for c in design.c))
    t.create(engine)
    return t


def _insert(engine: sa.Engine, t: sa.Table, rows: list[dict]) -> None:
    # a NaN in a text column is SQL's null (SQLite stores it so; PostgreSQL refuses a float for text)
    clean = [{k: None if isinstance(v, float) and math.isnan(v) and not isinstance(t.c[k].type, sa.Float) else v
              for k, v in r.items()} for r in rows]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(t), clean)


def _quarantined(engine: sa.Engine, table: str) -> dict[str, Counter[tuple[str, str]]]:
    """run key -> Counter of (row id, reason), read back from the quarantine table."""
    found: dict[str, Counter[tuple[str, str]]] = {}
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"select run_key, row_id, copy_index, reason from {table}_quarantine"))
        for run_key, row_id, _, reason in rows:
            found.setdefault(run_key, Counter())[(row_id, reason)] += 1
    return found


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda k: "design" if k is None else f"{k[0]}-{k[1].__name__}")
def test_every_bad_row_reaches_the_quarantine_table_once_per_run(warehouse, layout, tmp_path: Path) -> None:
    engine, table = warehouse
    rows = [(row(100 + n, **overrides), expected) for n, (_, overrides, expected) in enumerate(_cases(layout))]
    if layout is None:
        rows += [(row(i, timestamp=DAY + pd.Timedelta(hours=i)), None) for i in range(12)] + _extra_rows()
    t = _users_log_table(engine, table, layout)
    if engine.dialect.name == "postgresql":  # PostgreSQL text cannot hold NUL: the warehouse refuses the row
        refused = [r for r, _ in rows if "\x00" in str(r["prompt"])]
        rows = [(r, key) for r, key in rows if "\x00" not in str(r["prompt"])]
        for bad in refused:
            with pytest.raises(sa.exc.DataError, match="NUL"):
                _insert(engine, t, [bad])
    _insert(engine, t, [r for r, _ in rows])

    cfg = FtopsConfig(interactions_table=table, curation=CFG, storage=StorageConfig(
        dataset_repo=str(tmp_path / "datasets"), dvc_remote=str(tmp_path / "remote"),
        embedding_cache=str(tmp_path / "emb.db")))  # fmt: skip
    expected = Counter((r["id"] or "", key.split(":", 1)[1]) for r, key in rows if key and key.startswith("quar"))
    want = Counter(key for _, key in rows if key)

    def curate_all(run_key: str, now, **kwargs) -> Counter[str]:
        accounting: Counter[str] = Counter()
        for task_type in task_types_to_curate(engine, cfg):  # every task type of the log, as the DAG lists them
            result = curate_task_type(engine, cfg, task_type, run_key=run_key, now=now, embedder=HashEmbedder(),
                                      **kwargs)  # fmt: skip
            assert sum(result.get("accounting", {}).values()) == result["rows_read"]
            accounting.update(result.get("accounting", {}))
        assert sum(accounting.values()) == len(rows)  # every row read is accounted for
        return accounting

    first = curate_all("night-1", NOW)
    assert _quarantined(engine, table) == {"night-1": expected}
    retry = curate_all("night-1", NOW + timedelta(hours=1))  # the same run again: its rows replaced
    assert _quarantined(engine, table) == {"night-1": expected}
    reread = curate_all("manual-1", NOW + timedelta(days=1), since=DAY - timedelta(days=30))
    assert _quarantined(engine, table) == {"night-1": expected, "manual-1": expected}  # nothing lost
    for accounting in (first, retry, reread):
        assert {k: accounting[k] for k in want} == dict(want)
        assert {k for k in accounting if k.startswith("quarantined:")} == {k for k in want if k.startswith("quar")}
    if layout is None:
        assert [v.tag for v in dataset_registry(cfg).versions("sentiment")] == ["dataset/sentiment/v1"]


def _paths(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_the_rows_of_an_invalid_task_type_are_quarantined_and_nothing_is_written(warehouse, tmp_path: Path,
                                                                                  monkeypatch) -> None:  # fmt: skip
    engine, table = warehouse
    home = tmp_path / "deep" / "er" / "home"  # home/../../escape is still inside tmp_path, which is watched
    home.mkdir(parents=True)
    monkeypatch.setenv("FTOPS_HOME", str(home))
    cfg = FtopsConfig(interactions_table=table)  # the dataset registry, caches and Data Docs under FTOPS_HOME
    ensure_schema(engine, table)
    escape = "../../escape"
    insert_interactions(engine, [row(i, task_type=escape, timestamp=DAY + pd.Timedelta(minutes=i))
                                 for i in range(120)], table)  # fmt: skip
    assert task_types_to_curate(engine, cfg) == [escape]  # listed like any other, then refused by name
    before = _paths(tmp_path)
    embedder = HashEmbedder()
    for attempt in range(2):  # the run, then a retry of it
        result = curate_task_type(engine, cfg, escape, run_key="night-1", now=NOW + timedelta(minutes=attempt),
                                  embedder=embedder)  # fmt: skip
        assert result["status"] == "invalid_task_type" and not result["staged"]
        assert result["rows_read"] == 120 and result["accounting"] == {"quarantined:invalid_task_type": 120}
        with engine.connect() as conn:
            stored = conn.execute(sa.text(f"select task_type, reason, count(*) from {table}_quarantine "
                                          "group by task_type, reason")).all()  # fmt: skip
        assert [tuple(r) for r in stored] == [(escape, "invalid_task_type", 120)]
    assert embedder.embedded == 0  # nothing embedded, validated or versioned
    assert _paths(tmp_path) == before  # no file or folder written anywhere, inside FTOPS_HOME or out of it
    assert not (home / escape).exists() and not (home / "datasets" / escape).exists()
    assert watermark(engine, escape, table) == NOW  # the run is recorded: the next night reads only new rows
    with pytest.raises(InvalidNameError):
        publish_window(engine, cfg, escape, run_key="night-1")
