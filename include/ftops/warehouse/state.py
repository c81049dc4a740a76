"""The SQL warehouse: the interaction log, the quarantine and the governor's decisions.

Works on any SQLAlchemy engine (the embedded SQLite default, PostgreSQL, or whatever engine an Airflow
``common.sql`` hook hands over). Tables are created idempotently when missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ftops.core.stats import percentile
from ftops.warehouse.schema import as_utc, curation_tables, log_tables

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)


# -- curation state: the window of each run (whose end is the watermark) and the curated pool ---------
def curation_window(
    engine: sa.Engine,
    run_key: str,
    task_type: str,
    *,
    now: datetime,
    since: datetime | None = None,
    table: str = "interactions",
) -> tuple[datetime | None, datetime]:
    """The ``[since, until)`` window a curation run reads, fixed at its first attempt.

    A retry or re-run of the same run key gets the same window. A new run starts at ``since`` when given
    (re-reading history on purpose), else at the watermark: the end of the last completed run's window.
    """
    _, _, runs = curation_tables(table)
    key = sa.and_(runs.c.run_key == run_key, runs.c.task_type == task_type)
    with engine.begin() as conn:
        row = conn.execute(sa.select(runs.c.since, runs.c.until).where(key)).first()
        if row is not None:
            return as_utc(row.since), as_utc(row.until)  # type: ignore[return-value]
        if since is None:
            since = watermark(engine, task_type, table, conn=conn)
        conn.execute(sa.insert(runs), [{"run_key": run_key, "task_type": task_type, "log_table": table,
                                        "since": since, "until": now, "status": "started"}])  # fmt: skip
    return as_utc(since), now


def watermark(
    engine: sa.Engine, task_type: str, table: str = "interactions", *, conn: sa.Connection | None = None
) -> datetime | None:
    """End of the newest completed curation window of a task type (None before the first run)."""
    _, _, runs = curation_tables(table)
    query = sa.select(sa.func.max(runs.c.until)).where(
        runs.c.task_type == task_type, runs.c.log_table == table, runs.c.status == "done"
    )
    if conn is not None:
        return as_utc(conn.scalar(query))
    with engine.connect() as c:
        return as_utc(c.scalar(query))


def finish_curation_run(
    engine: sa.Engine,
    run_key: str,
    task_type: str,
    *,
    dataset_version: str | None,
    summary: Mapping[str, Any],
    table: str = "interactions",
) -> None:
    """Mark a run's window done: the watermark moves to its end."""
    _, _, runs = curation_tables(table)
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.run_key == run_key, runs.c.task_type == task_type)
            .values(status="done", dataset_version=dataset_version, finished_at=datetime.now(UTC),
                    summary=json.dumps(summary, default=str, sort_keys=True))  # fmt: skip
        )


POOL_COLUMNS = ("row_id", "task_type", "prompt", "response", "user_key", "user_feedback", "confidence",
                "latency_ms", "timestamp", "run_key")  # fmt: skip


def upsert_pool(engine: sa.Engine, rows: Sequence[Mapping[str, Any]], table: str = "interactions") -> int:
    """Store curated candidates (scrubbed text only), replacing earlier copies of the same row ids."""
    _, pool, _ = curation_tables(table)
    payload = [{c: r.get(c) for c in POOL_COLUMNS} for r in rows]
    with engine.begin() as conn:
        ids = [r["row_id"] for r in payload]
        for i in range(0, len(ids), 5000):
            conn.execute(sa.delete(pool).where(pool.c.row_id.in_(ids[i : i + 5000])))
        for i in range(0, len(payload), 5000):
            conn.execute(sa.insert(pool), payload[i : i + 5000])
    return len(payload)


def read_pool(engine: sa.Engine, task_type: str, table: str = "interactions") -> list[dict[str, Any]]:
    """Every curated candidate of a task type from earlier runs."""
    _, pool, _ = curation_tables(table)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(pool).where(pool.c.task_type == task_type).order_by(pool.c.row_id))
        return [{**r._mapping, "timestamp": as_utc(r.timestamp)} for r in rows]


def write_quarantine(
    engine: sa.Engine, run_key: str, rows: Sequence[Mapping[str, Any]], table: str = "interactions"
) -> int:
    """Store quarantined rows (with ``row_id``, ``task_type``, ``reason``, ``row``); idempotent per run key."""
    _, _, q, _ = log_tables(table)
    now = datetime.now().astimezone()
    payload = [
        {
            "run_key": run_key,
            "row_id": str(r["row_id"]),
            "task_type": r.get("task_type"),
            "reason": r["reason"],
            "row_json": json.dumps(r.get("row"), default=str),
            "quarantined_at": now,
        }
        for r in rows
    ]
    with engine.begin() as conn:
        conn.execute(sa.delete(q).where(q.c.run_key == run_key, q.c.task_type.in_({r["task_type"] for r in payload})))
        if payload:
            conn.execute(sa.insert(q), payload)
    return len(payload)


def record_decision(engine: sa.Engine, decision: Mapping[str, Any]) -> None:
    """Store one governor decision; re-recording the same ``decision_key`` replaces it (retry-safe)."""
    _, _, _, d = log_tables("interactions")
    row = dict(decision)
    row["details"] = json.dumps(row.get("details") or {}, default=str)
    with engine.begin() as conn:
        conn.execute(sa.delete(d).where(d.c.decision_key == row["decision_key"]))
        conn.execute(sa.insert(d), [row])


def read_decisions(engine: sa.Engine, task_type: str | None = None) -> list[dict[str, Any]]:
    """Governor decisions, newest first."""
    _, _, _, d = log_tables("interactions")
    query = sa.select(d).order_by(d.c.decided_at.desc())
    if task_type:
        query = query.where(d.c.task_type == task_type)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def live_metrics(
    engine: sa.Engine, task_type: str, model_version: str, since: datetime, table: str = "interactions"
) -> dict[str, float]:
    """Request count, error rate and p95 latency of one served model version since ``since``."""
    _, t, _, _ = log_tables(table)
    query = sa.select(t.c.success, t.c.latency_ms).where(
        t.c.task_type == task_type, t.c.model_version == model_version, t.c.timestamp >= since
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return {"requests": 0, "error_rate": 0.0, "latency_p95_ms": 0.0}
    p95 = percentile((float(r.latency_ms or 0) for r in rows), 0.95)
    errors = sum(1 for r in rows if not r.success)
    return {"requests": len(rows), "error_rate": errors / len(rows), "latency_p95_ms": p95}
