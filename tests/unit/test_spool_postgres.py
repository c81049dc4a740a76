"""The spool against the real PostgreSQL warehouse: a row it refuses is set aside, a table it lacks rejects nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ftops.serving.interaction_log import InteractionLogger
from ftops.warehouse.engines import create_engine
from ftops.warehouse.schema import ensure_schema, log_tables

pytestmark = pytest.mark.postgres
DOWN_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[sa.Engine, str]]:
    engine = sa.create_engine(postgres_url)  # a plain engine: the spool's own messages must hold no row data
    table = f"spool_pg_{uuid.uuid4().hex[:10]}"
    yield engine, table
    for t in log_tables(table)[1:3]:
        t.drop(engine, checkfirst=True)
    engine.dispose()


def _row(i: int, **extra: object) -> dict[str, object]:
    return {"task_type": "summarization", "prompt": f"confidential prompt {i}", "response": f"r{i}",
            "model_version": "ftops-x/1", "success": True, "latency_ms": 12, "tokens_used": 30, **extra}  # fmt: skip


def _ids(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.text(f"SELECT id FROM {table}")))


def test_a_value_the_warehouse_refuses_is_set_aside(
    pg: tuple[sa.Engine, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, table = pg
    ensure_schema(engine, table)
    with engine.begin() as conn:  # the user's own table: user ids of at most 8 characters
        conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN user_id TYPE varchar(8)")
    spool = tmp_path / "spool"
    with InteractionLogger(create_engine(DOWN_URL), table, spool) as down:  # spooled while the warehouse is away
        ids = [down.log(**_row(i, user_id="x" * 20 if i == 3 else f"u{i}")) for i in range(10)]
        assert down.flush() == 0 and down.health()["flush_error"].startswith("Warehouse unavailable")
    logger = InteractionLogger(engine, table, spool)
    logger.start()  # a restarted gateway with the refused row in its spool: starts, sets it aside
    logger.close()
    stored = _ids(engine, table)
    assert sorted(stored) == sorted(ids[:3] + ids[4:]) and len(stored) == len(set(stored)) == 9
    (entry,) = [json.loads(line) for line in (spool / "rejected.jsonl").read_text().splitlines()]
    assert entry["row"]["id"] == ids[3] and entry["row"]["user_id"] == "x" * 20
    assert entry["reason"].startswith("StringDataRightTruncation: value too long for type character varying(8)")
    assert "sqlstate 22001" in entry["reason"]
    assert not list(spool.glob("segment-*"))
    leaked = [r.getMessage() for r in caplog.records if "confidential prompt 3" in r.getMessage() or "x" * 20 in r.getMessage()]
    assert leaked == []
    with InteractionLogger(engine, table, spool) as again:  # restart: nothing left, a second flush does nothing
        assert again.health()["rejected_rows"] == 1 and again.spooled() == 0
        assert again.flush() == 0
    assert len(_ids(engine, table)) == 9


def test_a_missing_table_keeps_every_row(pg: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = pg
    with InteractionLogger(engine, table, tmp_path / "spool") as logger:
        ids = [logger.log(**_row(i)) for i in range(6)]
        assert logger.flush() == 0
        health = logger.health()
        assert health["spooled_rows"] == 6 and health["rejected_rows"] == 0
        assert health["flush_error"].startswith("Table refuses rows") and "UndefinedTable" in health["flush_error"]
        assert f'relation "{table}" does not exist' in health["flush_error"]
        ensure_schema(engine, table)  # the table appears: every row goes in
        assert logger.flush() == 6 and logger.health()["flush_error"] is None
    assert sorted(_ids(engine, table)) == sorted(ids)
    assert not (tmp_path / "spool" / "rejected.jsonl").exists()


def test_a_dropped_connection_keeps_every_row(pg: tuple[sa.Engine, str], tmp_path: Path) -> None:
    engine, table = pg
    ensure_schema(engine, table)
    pinned = sa.create_engine(engine.url, poolclass=sa.pool.StaticPool)  # one connection, killed below
    with InteractionLogger(pinned, table, tmp_path / "spool") as logger:
        ids = [logger.log(**_row(i)) for i in range(4)]
        with pinned.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        assert logger.flush() == 0
        assert logger.health()["spooled_rows"] == 4 and logger.health()["rejected_rows"] == 0
        assert logger.health()["flush_error"].startswith("Warehouse unavailable: AdminShutdown: terminating connection")
        pinned.dispose()  # a new connection: the rows go in
        assert logger.flush() == 4
    assert sorted(_ids(engine, table)) == sorted(ids)
