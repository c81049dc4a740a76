"""The SQL warehouse: the interaction log, the quarantine and the governor's decisions.

Works on any SQLAlchemy engine (the embedded SQLite default, PostgreSQL, or whatever engine an Airflow
``common.sql`` hook hands over). Tables are created idempotently when missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = (
    "id", "timestamp", "task_type", "prompt", "response", "model_version", "user_id",
    "user_feedback", "success", "confidence", "latency_ms", "tokens_used", "metadata",
)  # fmt: skip


def _tables(table: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    md = sa.MetaData()
    interactions = sa.Table(
        table,
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("task_type", sa.Text, nullable=False, index=True),
        sa.Column("prompt", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("user_id", sa.Text),
        sa.Column("user_feedback", sa.Integer),
        sa.Column("success", sa.Boolean),
        sa.Column("confidence", sa.Float),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("tokens_used", sa.Integer),
        sa.Column("metadata", sa.Text),
    )
    quarantine = sa.Table(
        f"{table}_quarantine",
        md,
        sa.Column("run_key", sa.Text, primary_key=True),
        sa.Column("row_id", sa.Text, primary_key=True),
        sa.Column("task_type", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row_json", sa.Text),
        sa.Column("quarantined_at", sa.DateTime(timezone=True)),
    )
    decisions = sa.Table(
        "ftops_decisions",
        md,
        sa.Column("decision_key", sa.Text, primary_key=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("train", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("dataset_version", sa.Text),
        sa.Column("details", sa.Text),
    )
    return md, interactions, quarantine, decisions


def ensure_schema(engine: sa.Engine, table: str = "interactions") -> None:
    """Create the interaction, quarantine and decision tables if missing (idempotent)."""
    md, *_ = _tables(table)
    md.create_all(engine, checkfirst=True)


def insert_interactions(engine: sa.Engine, rows: Iterable[Mapping[str, Any]], table: str = "interactions") -> int:
    """Insert log rows, skipping ids already present; returns how many were new."""
    _, t, _, _ = _tables(table)
    rows = [{c: r.get(c) for c in INTERACTION_COLUMNS} for r in rows]
    if not rows:
        return 0
    with engine.begin() as conn:
        existing: set[str] = set()
        ids = [r["id"] for r in rows]
        for i in range(0, len(ids), 5000):
            existing.update(conn.scalars(sa.select(t.c.id).where(t.c.id.in_(ids[i : i + 5000]))))
        new = [r for r in rows if r["id"] not in existing]
        for i in range(0, len(new), 5000):
            conn.execute(sa.insert(t), new[i : i + 5000])
    return len(new)


def read_interactions(
    engine: sa.Engine,
    task_type: str,
    *,
    table: str = "interactions",
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Read one task type's logs in ``[since, until)`` as a DataFrame.

    Raises:
        LookupError: The table does not exist (with the table name in the message).
    """
    import pandas as pd

    if not sa.inspect(engine).has_table(table):
        raise LookupError(f"warehouse table {table!r} does not exist; run `ftops simulate` or point "
                          "the ftops_warehouse connection at your log table")
    _, t, _, _ = _tables(table)
    query = sa.select(t).where(t.c.task_type == task_type)
    if since is not None:
        query = query.where(t.c.timestamp >= since)
    if until is not None:
        query = query.where(t.c.timestamp < until)
    with engine.connect() as conn:
        return pd.read_sql(query.order_by(t.c.timestamp, t.c.id), conn)


def list_task_types(engine: sa.Engine, table: str = "interactions") -> list[str]:
    """Distinct task types present in the log, sorted."""
    _, t, _, _ = _tables(table)
    with engine.connect() as conn:
        return sorted(x for x in conn.scalars(sa.select(t.c.task_type).distinct()) if x)


def write_quarantine(
    engine: sa.Engine, run_key: str, rows: Sequence[Mapping[str, Any]], table: str = "interactions"
) -> int:
    """Store quarantined rows (with ``row_id``, ``task_type``, ``reason``, ``row``); idempotent per run key."""
    _, _, q, _ = _tables(table)
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
    _, _, _, d = _tables("interactions")
    row = dict(decision)
    row["details"] = json.dumps(row.get("details") or {}, default=str)
    with engine.begin() as conn:
        conn.execute(sa.delete(d).where(d.c.decision_key == row["decision_key"]))
        conn.execute(sa.insert(d), [row])


def read_decisions(engine: sa.Engine, task_type: str | None = None) -> list[dict[str, Any]]:
    """Governor decisions, newest first."""
    _, _, _, d = _tables("interactions")
    query = sa.select(d).order_by(d.c.decided_at.desc())
    if task_type:
        query = query.where(d.c.task_type == task_type)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def live_metrics(
    engine: sa.Engine, task_type: str, model_version: str, since: datetime, table: str = "interactions"
) -> dict[str, float]:
    """Request count, error rate and p95 latency of one served model version since ``since``."""
    _, t, _, _ = _tables(table)
    query = sa.select(t.c.success, t.c.latency_ms).where(
        t.c.task_type == task_type, t.c.model_version == model_version, t.c.timestamp >= since
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return {"requests": 0, "error_rate": 0.0, "latency_p95_ms": 0.0}
    latencies = sorted(int(r.latency_ms or 0) for r in rows)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    errors = sum(1 for r in rows if not r.success)
    return {"requests": len(rows), "error_rate": errors / len(rows), "latency_p95_ms": float(p95)}
