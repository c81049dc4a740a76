import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from ftops_dev.simulate import generate_interactions

from ftops.warehouse import logread, state
from ftops.warehouse import schema as wh


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
    types = logread.list_task_types(engine, table)
    assert types == sorted({r["task_type"] for r in rows})
    frame = logread.read_interactions(engine, types[0], table=table)
    assert len(frame) == sum(r["task_type"] == types[0] for r in rows)
    assert set(wh.INTERACTION_COLUMNS) <= set(frame.columns)


def test_since_reads_only_newer_rows(engine, request) -> None:
    table = _table(request)
    wh.ensure_schema(engine, table)
    rows = generate_interactions(90, seed=2)
    wh.insert_interactions(engine, rows, table)
    task_type = rows[0]["task_type"]
    cut = sorted(r["timestamp"] for r in rows if r["task_type"] == task_type)[10]
    newer = logread.read_interactions(engine, task_type, table=table, since=cut)
    assert len(newer) == sum(r["task_type"] == task_type and r["timestamp"] >= cut for r in rows)


def test_missing_table_is_a_clear_error(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(LookupError, match="does not exist"):
        logread.read_interactions(engine, "sentiment", table="nope")


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


# -- upgrading the tables of an earlier release ----------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_engine(request, tmp_path):
    """A warehouse of its own: on PostgreSQL a schema of its own, as ftops_curation_runs is shared."""
    if request.param == "sqlite":
        yield sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"ftops_upgrade_{uuid.uuid4().hex[:10]}"
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
    yield sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


UNTIL = datetime(2026, 11, 1, tzinfo=UTC)


def _old_release_tables(engine) -> None:
    """The quarantine and curation-run tables as the previous release created them, with rows."""
    md = sa.MetaData()
    quarantine = sa.Table(
        "interactions_quarantine", md, sa.Column("run_key", sa.Text, primary_key=True),
        sa.Column("row_id", sa.Text, primary_key=True), sa.Column("task_type", sa.Text),
        sa.Column("reason", sa.Text, nullable=False), sa.Column("row_json", sa.Text),
        sa.Column("quarantined_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    runs = sa.Table(
        "ftops_curation_runs", md, sa.Column("run_key", sa.Text, primary_key=True),
        sa.Column("task_type", sa.Text, primary_key=True), sa.Column("log_table", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True)), sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False), sa.Column("dataset_version", sa.Text),
        sa.Column("summary", sa.Text), sa.Column("finished_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(quarantine), [{"run_key": "night-1", "row_id": i, "task_type": t, "reason": "null_prompt",
                                              "row_json": "{}"} for i, t in (("a", "t"), ("b", "t"), ("c", None))])  # fmt: skip
        conn.execute(sa.insert(runs), [{"run_key": "night-1", "task_type": "t", "log_table": "interactions",
                                        "until": UNTIL, "status": "done"}])  # fmt: skip


def _layout(engine, table: str) -> tuple[set[str], set[str]]:
    inspector = sa.inspect(engine)
    return {c["name"] for c in inspector.get_columns(table)}, set(inspector.get_pk_constraint(table)["constrained_columns"])


def _stored(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.exec_driver_sql(
            "select run_key, task_type, row_id, copy_index, reason from interactions_quarantine"))  # fmt: skip


def test_an_old_warehouse_is_upgraded_in_place_and_keeps_its_rows(fresh_engine) -> None:
    engine = fresh_engine
    _old_release_tables(engine)
    wh.ensure_schema(engine)
    assert _layout(engine, "interactions_quarantine")[1] == {"run_key", "task_type", "row_id", "copy_index"}
    assert _layout(engine, "ftops_curation_runs")[1] == {"log_table", "run_key", "task_type"}
    assert _stored(engine) == [("night-1", "", "c", 0, "null_prompt"), ("night-1", "t", "a", 0, "null_prompt"),
                               ("night-1", "t", "b", 0, "null_prompt")]  # a missing task type becomes ""
    assert state.watermark(engine, "t") == UNTIL  # the old run still moves the watermark
    wh.ensure_schema(engine)  # the current layout: nothing to do
    assert not [t for t in sa.inspect(engine).get_table_names() if t.endswith("_before_upgrade")]
    # what the old key refused: two copies of one id in one run
    copies = [{"row_id": "c", "task_type": "t", "reason": "duplicate_id_conflict", "row": {"n": n}} for n in (1, 2)]
    assert state.write_quarantine(engine, "night-2", copies) == 2
    assert [r for r in _stored(engine) if r[0] == "night-2"] == [("night-2", "t", "c", 0, "duplicate_id_conflict"),
                                                                 ("night-2", "t", "c", 1, "duplicate_id_conflict")]  # fmt: skip


def test_an_upgrade_interrupted_half_way_is_finished_by_the_next_call(fresh_engine) -> None:
    engine = fresh_engine
    _old_release_tables(engine)
    with engine.begin() as conn:  # crashed after renaming the old table aside and copying one row
        conn.exec_driver_sql("ALTER TABLE interactions_quarantine RENAME TO interactions_quarantine_before_upgrade")
    _, _, quarantine, _ = wh.log_tables("interactions")
    quarantine.create(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(quarantine), [{"run_key": "night-1", "task_type": "t", "row_id": "a", "copy_index": 0,
                                              "reason": "null_prompt"}])  # fmt: skip
    wh.ensure_state_tables(engine)
    assert _stored(engine) == [("night-1", "", "c", 0, "null_prompt"), ("night-1", "t", "a", 0, "null_prompt"),
                               ("night-1", "t", "b", 0, "null_prompt")]
    assert not sa.inspect(engine).has_table("interactions_quarantine_before_upgrade")


@pytest.mark.postgres
def test_tasks_starting_together_create_the_tables_once(postgres_url) -> None:
    schema = f"ftops_race_{uuid.uuid4().hex[:10]}"
    with sa.create_engine(postgres_url).begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
    try:
        engines = [sa.create_engine(postgres_url, connect_args={"options": f"-csearch_path={schema}"})
                   for _ in range(4)]  # fmt: skip
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(wh.ensure_state_tables, engines))  # without the lock: "relation already exists"
        assert {"interactions_quarantine", "ftops_curation_runs", "ftops_curation_staged"} <= set(
            sa.inspect(engines[0]).get_table_names())
    finally:
        with sa.create_engine(postgres_url).begin() as conn:
            conn.exec_driver_sql(f"drop schema {schema} cascade")


def test_a_retry_that_quarantines_nothing_clears_what_the_earlier_attempt_stored(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    wh.ensure_schema(engine)
    bad = [{"row_id": "a", "task_type": "t", "reason": "null_prompt", "row": {"id": "a"}}]
    state.write_quarantine(engine, "run1", bad, task_type="t")
    state.write_quarantine(engine, "run1", bad, task_type="u")  # another task type of the run: kept apart
    assert state.write_quarantine(engine, "run1", [], task_type="t") == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select task_type from interactions_quarantine").scalars().all() == ["u"]
