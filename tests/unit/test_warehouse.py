from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from ftops_dev.simulate import generate_interactions

from ftops.warehouse import schema as wh
from ftops.warehouse import state


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        yield sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
        return
    url = request.getfixturevalue("postgres_url")
    eng = sa.create_engine(url)
    table = f"it_{request.node.name.split('[')[0][-20:]}".lower()
    request.node.table = table
    yield eng
    with eng.begin() as conn:
        for t in (table, f"{table}_quarantine"):
            conn.exec_driver_sql(f"drop table if exists {t}")


def _table(request) -> str:
    return getattr(request.node, "table", "interactions")


def test_schema_is_created_idempotently_and_rows_round_trip(engine, request) -> None:
    table = _table(request)
    wh.ensure_schema(engine, table)
    wh.ensure_schema(engine, table)
    rows = generate_interactions(60, seed=1)
    assert wh.insert_interactions(engine, rows, table) == 60
    assert wh.insert_interactions(engine, rows, table) == 0  # same ids: nothing duplicated
    types = wh.list_task_types(engine, table)
    assert types == sorted({r["task_type"] for r in rows})
    frame = wh.read_interactions(engine, types[0], table=table)
    assert len(frame) == sum(r["task_type"] == types[0] for r in rows)
    assert set(wh.INTERACTION_COLUMNS) <= set(frame.columns)


def test_since_reads_only_newer_rows(engine, request) -> None:
    table = _table(request)
    wh.ensure_schema(engine, table)
    rows = generate_interactions(90, seed=2)
    wh.insert_interactions(engine, rows, table)
    task_type = rows[0]["task_type"]
    cut = sorted(r["timestamp"] for r in rows if r["task_type"] == task_type)[10]
    newer = wh.read_interactions(engine, task_type, table=table, since=cut)
    assert len(newer) == sum(r["task_type"] == task_type and r["timestamp"] >= cut for r in rows)


def test_missing_table_is_a_clear_error(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(LookupError, match="does not exist"):
        wh.read_interactions(engine, "sentiment", table="nope")


def test_quarantine_is_replaced_per_run_key(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    wh.ensure_schema(engine)
    bad = [{"row_id": "a", "task_type": "t", "reason": "null_prompt", "row": {"id": "a"}}]
    assert state.write_quarantine(engine, "run1", bad) == 1
    assert state.write_quarantine(engine, "run1", bad) == 1  # a retry does not duplicate
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from interactions_quarantine").scalar() == 1


def test_live_metrics(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    wh.ensure_schema(engine)
    now = datetime.now(UTC)
    rows = [
        {"id": str(i), "timestamp": now - timedelta(minutes=i), "task_type": "t", "prompt": "p", "response": "r",
         "model_version": "ftops-t/2", "success": i % 10 != 0, "latency_ms": 100 + i}
        for i in range(100)
    ]
    wh.insert_interactions(engine, rows)
    m = state.live_metrics(engine, "t", "ftops-t/2", now - timedelta(days=1))
    assert m["requests"] == 100
    assert m["error_rate"] == pytest.approx(0.1)
    assert 190 <= m["latency_p95_ms"] <= 199
    assert state.live_metrics(engine, "t", "ftops-t/9", now - timedelta(days=1))["requests"] == 0
