"""Erased log rows: the marks an erasure request (``ftops erase``) leaves, which every FT-Ops reader of the log
honours.

FT-Ops never deletes or alters the application's own log table: it is the application's record, and deleting
a user's raw rows there is the application owner's job. Instead each of the user's rows is marked in
``ftops_erased_rows`` (log table, row id, the user's pseudonymous key, the request; never the user id), and
every query FT-Ops runs on the log excludes the marked rows with :func:`not_erased`, so no later curation,
error-pattern or governor read sees them. The tables FT-Ops owns (the curated pool, the quarantine) lose the
user's rows outright (:func:`delete_user_rows`).

A row without an id cannot be marked: curation quarantines such rows (``missing_id``) and never curates them,
and :func:`delete_user_rows` removes their quarantined copies, but a later run may quarantine them again
until the application deletes them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

_BATCH = 5000  # ids per IN (...) list: far below every warehouse's parameter limit

ERASED_ROWS = sa.Table(
    "ftops_erased_rows",
    sa.MetaData(),
    sa.Column("log_table", sa.Text, nullable=False),
    sa.Column("row_id", sa.Text, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False, index=True),  # ftops.curation.rules.user_key, never the id
    sa.Column("request_key", sa.Text, nullable=False),
    sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
    # named as schema._primary_key names keys (<table>_pk); not imported from there: schema imports this module
    sa.PrimaryKeyConstraint("log_table", "row_id", name="ftops_erased_rows_pk"),
)


class _LogRowId(sa.ColumnElement[str]):
    """``<log table>.id``, referred to by the table's name rather than bound to one ``sa.Table`` object.

    SQLAlchemy correlates a subquery with the enclosing query by object identity, and two ``sa.Table``
    objects of one name (each ``log_tables(table)`` call builds its own) do not correlate: the subquery would
    read the log table a second time, uncorrelated. By name, the clause works inside a query on any
    (unaliased) ``sa.Table`` of the log table.
    """

    __visit_name__ = "ftops_log_row_id"
    inherit_cache = True
    _traverse_internals = [("name", InternalTraversal.dp_string), ("schema", InternalTraversal.dp_string)]

    def __init__(self, table: sa.Table) -> None:
        self.name, self.schema = table.name, table.schema
        self.type = sa.Text()


@compiles(_LogRowId)
def _compile_log_row_id(element: _LogRowId, compiler: SQLCompiler, **kw: Any) -> str:
    preparer = compiler.preparer
    table = preparer.quote(element.name)
    if element.schema:
        table = f"{preparer.quote_schema(element.schema)}.{table}"
    return f"{table}.{preparer.quote('id')}"


def not_erased(log_table_obj: sa.Table, table: str) -> sa.ColumnElement[bool]:
    """A condition that keeps the log rows no erasure marked: ``NOT EXISTS`` a mark of the row's id.

    Use it in any query that reads ``log_table_obj`` (unaliased): ``select(t).where(not_erased(t, table))``.

    Args:
        log_table_obj: The log table as the query reads it; any ``sa.Table`` of that name will do.
        table: The log table's name as FT-Ops knows it (``cfg.interactions_table``): marks are per log table.
    """
    row_id: sa.ColumnElement[Any] = _LogRowId(log_table_obj)
    if not isinstance(log_table_obj.c.id.type, sa.String):  # a user's table with, say, integer ids
        row_id = sa.cast(row_id, sa.Text)
    marks = ERASED_ROWS.c
    return ~sa.exists().where(marks.log_table == table, marks.row_id == row_id)


def mark_erased(
    engine: sa.Engine, table: str, row_ids: Iterable[str], *, user_key: str, request_key: str
) -> int:
    """Mark log rows erased (those not marked yet); returns how many marks are new.

    Args:
        engine: The warehouse.
        table: The log table.
        row_ids: The rows' ids.
        user_key: The pseudonymous key of the user whose rows they are.
        request_key: The erasure request.
    """
    wanted = sorted({str(i) for i in row_ids})
    now = datetime.now(UTC)
    added = 0
    with engine.begin() as conn:
        for i in range(0, len(wanted), _BATCH):
            part = wanted[i : i + _BATCH]
            done = set(conn.scalars(sa.select(ERASED_ROWS.c.row_id).where(
                ERASED_ROWS.c.log_table == table, ERASED_ROWS.c.row_id.in_(part))))  # fmt: skip
            new = [{"log_table": table, "row_id": r, "user_key": user_key, "request_key": request_key,
                    "erased_at": now} for r in part if r not in done]  # fmt: skip
            if new:
                conn.execute(sa.insert(ERASED_ROWS), new)
            added += len(new)
    return added


def erased_ids(engine: sa.Engine, table: str, ids: Iterable[str]) -> set[str]:
    """The ids among ``ids`` that an erasure marked in log table ``table``."""
    wanted = sorted({str(i) for i in ids})
    found: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(wanted), _BATCH):
            found.update(conn.scalars(sa.select(ERASED_ROWS.c.row_id).where(
                ERASED_ROWS.c.log_table == table, ERASED_ROWS.c.row_id.in_(wanted[i : i + _BATCH]))))  # fmt: skip
    return found


def marked_rows(engine: sa.Engine, table: str, user_keys: str | Collection[str]) -> set[str]:
    """The ids of the log rows marked erased for a user (by any of the user's keys: current and legacy)."""
    marks = ERASED_ROWS.c
    keys = [user_keys] if isinstance(user_keys, str) else list(user_keys)
    with engine.connect() as conn:
        return set(conn.scalars(sa.select(marks.row_id).where(marks.log_table == table, marks.user_key.in_(keys))))


def user_rows(engine: sa.Engine, log_table_obj: sa.Table, user_id: str) -> list[dict[str, Any]]:
    """A user's rows in the log (``id``, ``task_type``, ``prompt``), marked or not, by the raw user id.

    The id is compared as text, so a log table with integer user ids is searched too.
    """
    t = log_table_obj
    query = sa.select(t.c.id, t.c.task_type, t.c.prompt).where(sa.cast(t.c.user_id, sa.Text) == user_id)
    with engine.connect() as conn:
        return [{"id": None if r.id is None else str(r.id), "task_type": r.task_type, "prompt": r.prompt}
                for r in conn.execute(query)]  # fmt: skip


def pool_rows(engine: sa.Engine, pool: sa.Table, user_keys: str | Collection[str]) -> list[dict[str, Any]]:
    """A user's candidates in the curated pool (``row_id``, ``task_type``, ``prompt``: scrubbed), by any key."""
    keys = [user_keys] if isinstance(user_keys, str) else list(user_keys)
    query = sa.select(pool.c.row_id, pool.c.task_type, pool.c.prompt).where(pool.c.user_key.in_(keys))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def delete_user_rows(
    engine: sa.Engine,
    pool: sa.Table,
    quarantine: sa.Table,
    *,
    user_key: str | Collection[str],
    row_ids: Collection[str],
    stored_user_ids: Collection[str],
) -> tuple[int, int]:
    """Delete a user's rows from the tables FT-Ops owns: the curated pool and the quarantine.

    Args:
        engine: The warehouse.
        pool: The curated pool of the log table (``<table>_curated``).
        quarantine: The quarantine of the log table (``<table>_quarantine``).
        user_key: The user's key (or keys: current and legacy): pool rows carry one.
        row_ids: The user's log row ids: pool and quarantine rows of these ids go.
        stored_user_ids: The user id as a quarantined copy holds it (scrubbed): quarantined rows without an id
            go when their copy's ``user_id`` is one of these.

    Returns:
        Rows deleted from the pool and from the quarantine.
    """
    ids = sorted(row_ids)
    pool_deleted = quarantine_deleted = 0
    with engine.begin() as conn:
        keys = [user_key] if isinstance(user_key, str) else list(user_key)
        pool_deleted += conn.execute(sa.delete(pool).where(pool.c.user_key.in_(keys))).rowcount
        for i in range(0, len(ids), _BATCH):
            part = ids[i : i + _BATCH]
            pool_deleted += conn.execute(sa.delete(pool).where(pool.c.row_id.in_(part))).rowcount
            quarantine_deleted += conn.execute(sa.delete(quarantine).where(quarantine.c.row_id.in_(part))).rowcount
        for stored in stored_user_ids:
            # prefilter in SQL on the JSON text, then compare the parsed value: no JSON functions needed
            needle = f'"user_id": {json.dumps(stored)}'
            rows = conn.execute(sa.select(quarantine.c.run_key, quarantine.c.task_type, quarantine.c.copy_index,
                                          quarantine.c.row_json).where(
                quarantine.c.row_id == "", quarantine.c.row_json.contains(needle, autoescape=True))).all()  # fmt: skip
            for r in rows:
                if (json.loads(r.row_json) or {}).get("user_id") == stored:
                    quarantine_deleted += conn.execute(sa.delete(quarantine).where(
                        quarantine.c.run_key == r.run_key, quarantine.c.task_type == r.task_type,
                        quarantine.c.row_id == "", quarantine.c.copy_index == r.copy_index)).rowcount  # fmt: skip
    return pool_deleted, quarantine_deleted
