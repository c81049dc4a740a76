"""The warehouse's tables and the interaction log: schema, connection and inserting log rows (reading them:
:mod:`ftops.warehouse.logread`).

Works on any SQLAlchemy engine (the embedded SQLite default, PostgreSQL, or whatever engine an Airflow
``common.sql`` hook hands over). FT-Ops' own tables are created idempotently when missing, and upgraded in
place, keeping their rows, when a warehouse holds the layout of an earlier release (see
:func:`ensure_state_tables`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ftops.core.names import key_digest
from ftops.warehouse import teacher_store
from ftops.warehouse.erasure import ERASED_ROWS

log = logging.getLogger(__name__)


# Columns curation cannot do without; the rest of the log schema may be missing (read as nulls).
REQUIRED_COLUMNS = ("id", "task_type", "prompt", "response", "user_feedback", "success", "latency_ms")
INTERACTION_COLUMNS = (
    "id", "timestamp", "task_type", "prompt", "response", "model_version", "user_id",
    "user_feedback", "success", "task_success", "confidence", "latency_ms", "tokens_used", "metadata", "key_id",
    "correction", "request",
)  # fmt: skip
# Columns added after the first release: an existing log table gains them in place (nullable, rows kept).
ADDED_COLUMNS = ("task_success", "key_id", "correction", "correction_key_id", "corrected_at", "request")
# the curated pool's newer columns, added in place
POOL_ADDED_COLUMNS = ("model_version", "source", "rejected", "context")


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
        sa.Column("success", sa.Boolean),  # as the gateway (or the logging app) recorded it; feedback never changes it
        sa.Column("task_success", sa.Boolean),  # the client's verdict from feedback: did the answer do its job
        sa.Column("confidence", sa.Float),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("tokens_used", sa.Integer),
        sa.Column("metadata", sa.Text),
        sa.Column("key_id", sa.Text),  # which API key made the call (a prefix of the key's hash, never the key)
        sa.Column("correction", sa.Text),  # the right answer, from a user or a review tool; raw, scrubbed where used
        sa.Column("correction_key_id", sa.Text),  # the API key that sent the correction through /v1/feedback
        sa.Column("corrected_at", sa.DateTime(timezone=True)),  # when /v1/feedback stored it
        # the whole request as JSON: {"messages": [{role, content}, ...], sampling parameters}; prompt stays the
        # last user message (None: logged without it, a single-turn call)
        sa.Column("request", sa.Text),
    )
    quarantine = sa.Table(
        f"{table}_quarantine",
        md,
        sa.Column("run_key", sa.Text, nullable=False),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("row_id", sa.Text, nullable=False),  # "" for a row without an id
        # which copy of row_id in the task type's batch: a user's log table may hold one id several times
        # (copies quarantined as duplicate_id_conflict, several null ids), or under several task types
        sa.Column("copy_index", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row_json", sa.Text),
        sa.Column("quarantined_at", sa.DateTime(timezone=True)),
        _primary_key(f"{table}_quarantine", "run_key", "task_type", "row_id", "copy_index"),
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
        sa.Column("details", sa.Text),  # JSON: every policy's and guard's inputs and verdict
        # training (the governor), training_request / rollback_request (a person, e.g. through `ftops mcp`),
        # erasure (`ftops erase`)
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("policy", sa.Text),  # the policy that fired (new_data, error_pattern, plateau, force, erasure)
        sa.Column("run_id", sa.Text),  # the DAG run the decision started, if any
    )
    return md, interactions, quarantine, decisions


def curation_tables(table: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    """The curated pool of a log table, and the run and staging tables shared by every log table."""
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
        sa.Column("model_version", sa.Text),  # the version whose answer is the response (None: unknown)
        sa.Column("source", sa.Text),  # where the response (the target) came from: served | correction | teacher
        # the served answer that a correction or teacher answer replaced (scrubbed): a preference pair's rejected
        sa.Column("rejected", sa.Text),
        # the turns before the prompt (system, earlier user and assistant turns), scrubbed, as JSON; None: single-turn
        sa.Column("context", sa.Text),
    )
    runs = sa.Table(  # keyed by log table too: two projects sharing a warehouse have the same DAG run ids
        "ftops_curation_runs",
        md,
        sa.Column("log_table", sa.Text, nullable=False),
        sa.Column("run_key", sa.Text, nullable=False),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True)),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("dataset_version", sa.Text),
        sa.Column("summary", sa.Text),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        _primary_key("ftops_curation_runs", "log_table", "run_key", "task_type"),
    )
    staged = sa.Table(  # the hand-over from curating a window to publishing it; deleted when the run is done
        "ftops_curation_staged",
        md,
        sa.Column("log_table", sa.Text, nullable=False),
        sa.Column("run_key", sa.Text, nullable=False),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),  # JSON: the curate step's result
        sa.Column("train_jsonl", sa.Text),  # null when the window adds candidates but no version is due
        sa.Column("test_jsonl", sa.Text),
        sa.Column("metadata_json", sa.Text),
        sa.Column("candidates_json", sa.Text, nullable=False),  # JSON: this batch's survivors, for the pool
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
        _primary_key("ftops_curation_staged", "log_table", "run_key", "task_type"),
    )
    return md, pool, runs, staged


def training_runs_table() -> tuple[sa.MetaData, sa.Table]:
    """How each fine-tune the governor started ended (``ftops_finetune`` records it), for its retry guard."""
    md = sa.MetaData()
    runs = sa.Table(
        "ftops_training_runs",
        md,
        sa.Column("run_id", sa.Text, primary_key=True),  # the ftops_finetune DAG run id
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("dataset_version", sa.Text),  # as requested (null: the latest at the time)
        sa.Column("status", sa.Text, nullable=False),  # succeeded | failed
        sa.Column("model_version", sa.Text),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    return md, runs


def _primary_key(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    """A primary key named ``<table>_pk``: never PostgreSQL's default ``<table>_pkey``, which the table of an
    earlier layout still holds while it is renamed aside during an upgrade (index names share a namespace)."""
    name = f"{table}_pk"
    if len(name) > 60:  # PostgreSQL cuts identifiers at 63 bytes; SQLAlchemy refuses longer explicit names
        name = f"{table[:40]}_{key_digest(table)[:12]}_pk"
    return sa.PrimaryKeyConstraint(*columns, name=name)


def ensure_schema(engine: sa.Engine, table: str = "interactions") -> None:
    """Create the interaction log and FT-Ops' own tables if missing, and add the log's newer columns
    (``ADDED_COLUMNS``, nullable) to a log table that lacks them, keeping its rows (idempotent)."""
    md, t, *_ = log_tables(table)
    md.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_STATE_TABLES_LOCK)))
        _add_columns(conn, t, ADDED_COLUMNS)
    ensure_state_tables(engine, table)


def _add_columns(conn: sa.Connection, table: sa.Table, names: Sequence[str]) -> None:
    """Add the nullable columns ``names`` of ``table`` that the warehouse's table lacks, keeping its rows."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    quote = conn.dialect.identifier_preparer.quote
    for name in (c for c in names if c not in have):
        log.warning("Adding column %s to the table %s (nullable; rows kept)", name, table.name)
        kind = table.c[name].type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} {kind}")


# Any constant: PostgreSQL advisory lock that serialises creating and upgrading FT-Ops' tables.
_STATE_TABLES_LOCK = int.from_bytes(hashlib.sha256(b"ftops.warehouse.state_tables").digest()[:8], "big", signed=True)


def ensure_state_tables(engine: sa.Engine, table: str = "interactions") -> None:
    """Create FT-Ops' own tables (quarantine, decisions, curated pool, curation runs, staging, teacher answers),
    never the log.

    A table in the layout of an earlier release is upgraded, keeping its rows: ``<table>_quarantine`` gains
    ``task_type`` and ``copy_index`` in its key (existing rows get copy 0), ``ftops_curation_runs`` gains
    ``log_table`` in its key, ``ftops_decisions`` gains ``kind`` (earlier rows: ``training``), ``policy`` and
    ``run_id``.
    On PostgreSQL an advisory lock lets concurrent callers (mapped tasks starting together) take turns.

    Raises:
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    connect(engine).close()
    md, _, quarantine, decisions = log_tables(table)
    curation_md, pool, runs, _ = curation_tables(table)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_STATE_TABLES_LOCK)))
        _upgrade_layout(conn, quarantine, fill={"copy_index": 0, "task_type": ""})
        _upgrade_layout(conn, runs)
        _upgrade_layout(conn, decisions, fill={"kind": "training"})
        md.create_all(conn, tables=[quarantine, decisions], checkfirst=True)
        curation_md.create_all(conn, checkfirst=True)
        _add_columns(conn, pool, POOL_ADDED_COLUMNS)
        training_runs_table()[0].create_all(conn, checkfirst=True)
        ERASED_ROWS.create(conn, checkfirst=True)  # the marks of erased log rows (ftops.warehouse.erasure)
        teacher_store.create_tables(conn)  # the teacher's answers (ftops.warehouse.teacher_store)


def _upgrade_layout(conn: sa.Connection, table: sa.Table, fill: Mapping[str, Any] | None = None) -> None:
    """Rebuild ``table`` in its current layout if the warehouse holds another one, keeping every row.

    The old table is renamed aside (``<name>_before_upgrade``), the new one created, the rows copied (where
    the old layout lacks a column of ``fill``, or holds null in it, the value from ``fill``), and the old table
    dropped. Every step can be repeated, so after a crash the next call finishes the upgrade from where it
    stopped.

    Raises:
        RuntimeError: Both the old layout and a table with the aside name exist (left alone for a person).
    """
    aside = f"{table.name}_before_upgrade"
    inspector = sa.inspect(conn)
    if inspector.has_table(table.name):
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        key = set(inspector.get_pk_constraint(table.name)["constrained_columns"])
        if columns >= set(table.c.keys()) and key == set(table.primary_key.columns.keys()):
            if not inspector.has_table(aside):
                return
        elif inspector.has_table(aside):
            raise RuntimeError(f"cannot upgrade {table.name!r}: a table {aside!r} is in the way; rename it")
        else:
            quote = conn.dialect.identifier_preparer.quote
            log.warning("Upgrading warehouse table %s to the current layout (rows kept)", table.name)
            conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} RENAME TO {quote(aside)}")
    elif not inspector.has_table(aside):
        return  # a new warehouse: created by the caller
    table.create(conn, checkfirst=True)
    old = sa.Table(aside, sa.MetaData(), autoload_with=conn)
    fill = dict(fill or {})
    values: dict[str, Any] = {c: old.c[c] for c in table.c.keys() if c in old.c}
    values |= {c: sa.func.coalesce(old.c[c], v) if c in old.c else sa.literal(v) for c, v in fill.items()}
    copied = sa.select(*(v.label(c) for c, v in values.items())).where(
        ~sa.exists().where(*(table.c[c] == values[c] for c in table.primary_key.columns.keys()))
    )
    moved = conn.execute(sa.insert(table).from_select(list(values), copied)).rowcount
    old.drop(conn)
    log.warning("Upgraded %s: %s rows kept", table.name, moved)


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


def connect(engine: sa.Engine) -> sa.Connection:
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise WarehouseUnavailableError(f"cannot reach the warehouse {where}: {exc.orig}") from exc
    if engine.dialect.name == "sqlite":
        conn.connection.dbapi_connection.text_factory = _lenient_text  # type: ignore[union-attr]
    return conn
