"""The warehouse's tables and the interaction log: schema, connection, inserting and reading log rows.

Works on any SQLAlchemy engine (the embedded SQLite default, PostgreSQL, or whatever engine an Airflow
``common.sql`` hook hands over). Tables are created idempotently when missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    import pandas as pd


# Columns curation cannot do without; the rest of the log schema may be missing (read as nulls).
REQUIRED_COLUMNS = ("id", "task_type", "prompt", "response", "user_feedback", "success", "latency_ms")
INTERACTION_COLUMNS = (
    "id", "timestamp", "task_type", "prompt", "response", "model_version", "user_id",
    "user_feedback", "success", "confidence", "latency_ms", "tokens_used", "metadata",
)  # fmt: skip


def log_tables(table: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
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


def curation_tables(table: str) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    md = sa.MetaData()
    pool = sa.Table(
        f"{table}_curated",
        md,
        sa.Column("row_id", sa.Text, primary_key=True),
        sa.Column("task_type", sa.Text, nullable=False, index=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("user_key", sa.Text),
        sa.Column("user_feedback", sa.Float),
        sa.Column("confidence", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("timestamp", sa.DateTime(timezone=True)),
        sa.Column("run_key", sa.Text, nullable=False),
    )
    runs = sa.Table(
        "ftops_curation_runs",
        md,
        sa.Column("run_key", sa.Text, primary_key=True),
        sa.Column("task_type", sa.Text, primary_key=True),
        sa.Column("log_table", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True)),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("dataset_version", sa.Text),
        sa.Column("summary", sa.Text),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    return md, pool, runs


def ensure_schema(engine: sa.Engine, table: str = "interactions") -> None:
    """Create the interaction log and FT-Ops' own tables if missing (idempotent)."""
    md, *_ = log_tables(table)
    md.create_all(engine, checkfirst=True)
    ensure_state_tables(engine, table)


def ensure_state_tables(engine: sa.Engine, table: str = "interactions") -> None:
    """Create FT-Ops' own tables (quarantine, decisions, curated pool, curation runs), never the log itself.

    Raises:
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    _connect(engine).close()
    md, _, quarantine, decisions = log_tables(table)
    md.create_all(engine, tables=[quarantine, decisions], checkfirst=True)
    curation_tables(table)[0].create_all(engine, checkfirst=True)


def insert_interactions(engine: sa.Engine, rows: Iterable[Mapping[str, Any]], table: str = "interactions") -> int:
    """Insert log rows, skipping ids already present; returns how many were new."""
    _, t, _, _ = log_tables(table)
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


class WarehouseUnavailableError(ConnectionError):
    """The warehouse cannot be reached (a retry may help)."""


def as_utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetime (SQLite hands back naive UTC values)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _lenient_text(raw: bytes) -> str:
    # Invalid UTF-8 stored in SQLite would abort the whole read; decode it with U+FFFD replacement
    # characters instead, which curation quarantines (reason invalid_unicode_in_<column>).
    return raw.decode("utf-8", "replace")


def _connect(engine: sa.Engine) -> sa.Connection:
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise WarehouseUnavailableError(f"cannot reach the warehouse {where}: {exc.orig}") from exc
    if engine.dialect.name == "sqlite":
        conn.connection.dbapi_connection.text_factory = _lenient_text  # type: ignore[union-attr]
    return conn


def log_columns(engine: sa.Engine, table: str = "interactions") -> list[str]:
    """Column names of the interaction log.

    Raises:
        LookupError: The table does not exist.
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    with _connect(engine) as conn:
        inspector = sa.inspect(conn)
        if not inspector.has_table(table):
            raise LookupError(f"warehouse table {table!r} does not exist; run `ftops simulate` or point "
                              "the ftops_warehouse connection at your log table")  # fmt: skip
        return [c["name"] for c in inspector.get_columns(table)]


def read_interactions(
    engine: sa.Engine,
    task_type: str,
    *,
    table: str = "interactions",
    since: datetime | None = None,
    until: datetime | None = None,
    future_after: datetime | None = None,
) -> pd.DataFrame:
    """Read one task type's logs with timestamps in ``[since, until)`` as a DataFrame.

    Rows with no timestamp, and rows stamped at or after ``future_after`` (the future, beyond clock skew),
    are read too, so that curation quarantines them instead of never seeing them. The table's own column
    types are used (reflected), so a user's table with, say, a text rating column is read as it is.

    Raises:
        LookupError: The table does not exist, or a required column is missing (schema drift).
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    import pandas as pd


    found = log_columns(engine, table)
    missing = [c for c in ("timestamp", *REQUIRED_COLUMNS) if c not in found]
    if missing:
        raise LookupError(f"warehouse table {table!r} is missing columns {missing} (renamed?); it has {found}. "
                          "Rename them back or create a view with the log schema (see DESIGN.md)")  # fmt: skip
    # our column types (timestamps parsed on SQLite too), only for the columns the table has
    _, schema, _, _ = log_tables(table)
    t = sa.Table(table, sa.MetaData(), *(sa.Column(c.name, c.type) for c in schema.c if c.name in found))
    ts = t.c.timestamp
    in_window = sa.and_(
        sa.true() if since is None else ts >= since,
        sa.true() if until is None else ts < until,
    )
    if future_after is not None:
        in_window = sa.or_(in_window, ts >= future_after)
    query = (
        sa.select(*(t.c[c] for c in INTERACTION_COLUMNS if c in found))
        .where(t.c.task_type == task_type, sa.or_(in_window, ts.is_(None)))
        .order_by(ts, t.c.id)
    )
    if engine.dialect.name == "postgresql":
        from ftops.warehouse.sqlread import read_frame

        frame = read_frame(engine, query)  # Arrow-native (ADBC): ~5x pandas.read_sql, a third of the memory
    else:
        with _connect(engine) as conn:
            frame = pd.read_sql(query, conn)
    for column in INTERACTION_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame[list(INTERACTION_COLUMNS)]


def list_task_types(engine: sa.Engine, table: str = "interactions") -> list[str]:
    """Distinct task types present in the log, sorted."""
    _, t, _, _ = log_tables(table)
    with engine.connect() as conn:
        return sorted(x for x in conn.scalars(sa.select(t.c.task_type).distinct()) if x)
