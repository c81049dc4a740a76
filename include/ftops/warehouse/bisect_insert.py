"""Inserting interaction rows so that one row the warehouse refuses cannot block the others.

:func:`insert_or_bisect` inserts a batch; when the warehouse refuses it for a reason that may lie in a row (a
value too long for a user's ``varchar``, a NUL byte, a constraint), it first checks that the table takes a
minimal row at all (a probe inside a transaction that is rolled back), then halves the batch until the refused
rows stand alone, inserts the rest, and hands the refused rows back with the reason. A problem that is not about
a row (the warehouse unreachable, the table missing, no permission) refuses the probe too: then nothing is
refused and the caller keeps every row for a later try.

Error texts (:func:`error_text`) hold the exception type and the driver's first message line with quoted values
masked, never the statement's parameters: they are logged and stored beside rejected rows.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ftops.warehouse.schema import WarehouseUnavailableError, insert_interactions, log_tables

log = logging.getLogger(__name__)

# The warehouse cannot be reached or the connection broke: a retry later may work, no row is at fault.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    WarehouseUnavailableError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError,
    sa.exc.TimeoutError,
)  # fmt: skip
# Errors that a value of some row may cause (DataError, IntegrityError, a driver refusing to encode a value...):
# StatementError is the base of every DBAPI error SQLAlchemy raises for a statement, and of parameter errors.
MAYBE_ROW: tuple[type[BaseException], ...] = (sa.exc.StatementError, ValueError, TypeError)
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


class WarehouseRefusedError(RuntimeError):
    """The interaction table refuses even a minimal row (missing, no permission, a constraint no row meets)."""


def error_text(exc: BaseException, *, mask_values: bool = False) -> str:
    """The exception type and the first line of the driver's message, for logs and the rejected file.

    Never the statement's parameters: SQLAlchemy's own text (``[parameters: ...]``) is not used. PostgreSQL's
    SQLSTATE and the column it names are added when the driver gives them.

    Args:
        exc: The error.
        mask_values: Replace quoted parts of the message (where PostgreSQL echoes an offending value, e.g.
            ``invalid input syntax for type integer: "..."``) with ``"…"``.
    """
    orig = getattr(exc, "orig", None) if isinstance(exc, sa.exc.StatementError) else None
    source = orig if orig is not None else exc
    lines = str(source).strip().splitlines()
    first = lines[0] if lines else ""
    if isinstance(exc, sa.exc.StatementError) and orig is None:
        first = first.split(" [SQL:", 1)[0]  # SQLAlchemy appends the statement (and parameters) to its own text
    if mask_values:
        first = _QUOTED.sub('"…"', first)
    diag = getattr(source, "diag", None)
    extra = [f"{k} {v}" for k, v in (("sqlstate", getattr(source, "sqlstate", None)),
                                     ("column", getattr(diag, "column_name", None))) if v]  # fmt: skip
    return f"{type(source).__name__}: {first[:300]}" + (f" ({', '.join(extra)})" if extra else "")


def insert_or_bisect(
    engine: sa.Engine, rows: Sequence[Mapping[str, Any]], table: str = "interactions"
) -> tuple[int, list[tuple[Mapping[str, Any], str]]]:
    """Insert rows (ids already present are skipped); rows the warehouse refuses are left out and handed back.

    Args:
        engine: The warehouse.
        rows: Interaction rows as the warehouse takes them, ids unique within the batch.
        table: The interaction log table.

    Returns:
        How many rows were new, and each refused row with its reason (:func:`error_text`, values masked).

    Raises:
        WarehouseUnavailableError: The warehouse cannot be reached (some halves may have committed already: a
            retry skips their ids).
        WarehouseRefusedError: The table refuses a minimal row too, so no row is to blame.
    """
    try:
        return _insert(engine, rows, table), []
    except MAYBE_ROW as exc:
        first = exc
    _probe(engine, table, first)
    new, refused = _bisect(engine, rows, table)
    log.info("Bisected a refused batch of %s rows: %s new, %s refused", len(rows), new, len(refused))
    return new, refused


def _insert(engine: sa.Engine, rows: Sequence[Mapping[str, Any]], table: str) -> int:
    try:
        return insert_interactions(engine, rows, table)
    except UNAVAILABLE as exc:
        if isinstance(exc, WarehouseUnavailableError):
            raise
        raise WarehouseUnavailableError(error_text(exc)) from None  # no chained traceback with the parameters


def _bisect(engine: sa.Engine, rows: Sequence[Mapping[str, Any]], table: str) -> tuple[int, list[tuple[Any, str]]]:
    """Insert each half on its own (the whole already failed), down to the single rows that fail alone."""
    new, refused = 0, []
    mid = len(rows) // 2
    for half in (rows[:mid], rows[mid:]):
        if not half:
            continue
        try:
            new += _insert(engine, half, table)
        except MAYBE_ROW as exc:
            if len(half) == 1:
                refused.append((half[0], error_text(exc, mask_values=True)))
            else:
                n, r = _bisect(engine, half, table)
                new, refused = new + n, refused + r
    return new, refused


def _probe(engine: sa.Engine, table: str, batch_error: BaseException) -> None:
    """Insert a minimal row in a transaction that is rolled back: does the table take rows at all?"""
    _, t, _, _ = log_tables(table)
    probe = {"id": f"ftops-probe-{uuid.uuid4().hex}", "timestamp": datetime.now(UTC), "task_type": "probe"}
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            try:
                conn.execute(sa.insert(t), [probe])
            finally:
                tx.rollback()
    except UNAVAILABLE as exc:
        raise WarehouseUnavailableError(error_text(exc)) from None
    except MAYBE_ROW as exc:
        raise WarehouseRefusedError(f"{table} refuses every row: {error_text(batch_error)}; a minimal row: "
                                    f"{error_text(exc)}") from None  # fmt: skip
