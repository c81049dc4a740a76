"""Reading the interaction log: its columns, its task types, and one task type's rows in a time window.

Reads use the table's own column types (reflected), so a user's log table with drifted types is read as it
is and curation quarantines what does not fit. Rows an erasure marked are never read, only counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ftops.warehouse.erasure import not_erased
from ftops.warehouse.schema import INTERACTION_COLUMNS, REQUIRED_COLUMNS, connect, log_tables

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def log_columns(engine: sa.Engine, table: str = "interactions") -> list[str]:
    """Column names of the interaction log.

    Raises:
        LookupError: The table does not exist.
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    return list(_column_types(engine, table))


def _column_types(engine: sa.Engine, table: str) -> dict[str, Any]:
    """The log table's columns and their types as the warehouse declares them (reflected)."""
    with connect(engine) as conn:
        inspector = sa.inspect(conn)
        if not inspector.has_table(table):
            raise LookupError(f"warehouse table {table!r} does not exist; run `ftops simulate` or point "
                              "the ftops_warehouse connection at your log table")  # fmt: skip
        return {c["name"]: c["type"] for c in inspector.get_columns(table)}


def read_interactions(engine: sa.Engine, task_type: str, **window: Any) -> pd.DataFrame:
    """:func:`read_log_window`'s rows, without the count of erased rows."""
    return read_log_window(engine, task_type, **window)[0]


def read_log_window(
    engine: sa.Engine,
    task_type: str,
    *,
    table: str = "interactions",
    since: datetime | None = None,
    until: datetime | None = None,
    future_after: datetime | None = None,
) -> tuple[pd.DataFrame, int]:
    """Read one task type's logs with timestamps in ``[since, until)`` as a DataFrame, and count the erased.

    Rows an erasure marked (``ftops.warehouse.erasure``) are left out, only counted: their text is never read.

    Rows with no timestamp, and rows stamped at or after ``future_after`` (the future, beyond clock skew),
    are read too, so that curation quarantines them instead of never seeing them. The table's own column
    types are used (reflected), so a user's table with, say, a text rating or success column is read as it
    is (and curation quarantines what is not a number or a boolean). A timestamp that is not a time (text
    in SQLite, or a text ``timestamp`` column anywhere) is read like a missing one, so curation quarantines
    it; with a text ``timestamp`` column the window is applied after reading the task type's rows.

    Raises:
        LookupError: The table does not exist, or a required column is missing (schema drift).
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    import pandas as pd

    found = _column_types(engine, table)
    missing = [c for c in ("timestamp", *REQUIRED_COLUMNS) if c not in found]
    if missing:
        raise LookupError(f"warehouse table {table!r} is missing columns {missing} (renamed?); it has "
                          f"{list(found)}. Rename them back or create a view with the log schema (see DESIGN.md)")  # fmt: skip
    # the table's own types; ours where the warehouse reports none SQLAlchemy knows
    _, schema, _, _ = log_tables(table)
    t = sa.Table(table, sa.MetaData(), *(
        sa.Column(c.name, c.type if isinstance(found[c.name], sa.types.NullType) else found[c.name])
        for c in schema.c if c.name in found
    ))  # fmt: skip
    ts = t.c.timestamp
    timed = isinstance(ts.type, sa.DateTime | sa.Date)
    sqlite = engine.dialect.name == "sqlite"
    # SQLite keeps times as text: read them as text and parse them here, so one value that is not a time is
    # quarantined (timestamp_not_a_time) instead of failing the whole read
    selected = [sa.type_coerce(t.c[c], sa.Text).label(c) if c == "timestamp" and (sqlite or not timed) else t.c[c]
                for c in INTERACTION_COLUMNS if c in found]  # fmt: skip
    query = sa.select(*selected).where(t.c.task_type == task_type).order_by(ts, t.c.id)
    keep = not_erased(t, table)
    if timed:
        in_window = sa.and_(sa.true() if since is None else ts >= since, sa.true() if until is None else ts < until)
        if future_after is not None:
            in_window = sa.or_(in_window, ts >= future_after)
        query = query.where(sa.or_(in_window, ts.is_(None)))
    else:
        log.warning("The timestamp column of %s is %s, not a time: every %s row is read and the window applied "
                    "here; declare it as a timestamp to read only new rows", table, found["timestamp"], task_type)  # fmt: skip
    with connect(engine) as conn:  # the erased rows' times only, never their text
        hidden = pd.Series(conn.scalars(query.with_only_columns(sa.type_coerce(ts, sa.Text)).where(~keep)).all())
    erased = len(hidden) if timed else int(_kept(hidden, since, until, future_after).sum())
    query = query.where(keep)
    if engine.dialect.name == "postgresql":
        from ftops.warehouse.sqlread import read_frame

        frame = read_frame(engine, query)  # Arrow-native (ADBC): ~5x pandas.read_sql, a third of the memory
    else:
        with connect(engine) as conn:
            frame = pd.read_sql(query, conn)
    if sqlite or not timed:
        frame["timestamp"] = _parse_times(frame["timestamp"])
    if not timed:
        frame = frame[_kept(frame["timestamp"], since, until, future_after)].reset_index(drop=True)
    for column in INTERACTION_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame[list(INTERACTION_COLUMNS)], erased


def _kept(values: pd.Series, since: datetime | None, until: datetime | None, future_after: datetime | None) -> pd.Series:
    """Which rows a read keeps by their timestamps, applied here where the column is not a time."""
    import pandas as pd

    stamps = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    keep = stamps.isna()  # not a time: read, to be quarantined
    in_window = stamps.notna()
    if since is not None:
        in_window &= stamps >= since
    if until is not None:
        in_window &= stamps < until
    keep |= in_window
    if future_after is not None:
        keep |= stamps >= future_after
    return keep


def _parse_times(values: pd.Series) -> pd.Series:
    """Times as UTC timestamps; where a value is not a time, the value itself (so curation can name it)."""
    import pandas as pd

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    bad = values.notna() & parsed.isna()
    if not bad.any():
        return parsed
    return parsed.astype(object).where(~bad, values)


def list_task_types(engine: sa.Engine, table: str = "interactions") -> list[str]:
    """Distinct task types present in the log, sorted: valid names or not (curation quarantines the rows of a
    task type that is not a valid name, see ``ftops.core.names``)."""
    _, t, _, _ = log_tables(table)
    with engine.connect() as conn:
        return sorted(x for x in conn.scalars(sa.select(t.c.task_type).distinct()) if x is not None)


def read_rows_by_id(
    engine: sa.Engine, task_type: str, row_ids: Sequence[str], table: str = "interactions"
) -> list[dict[str, Any]]:
    """The log rows of ``task_type`` with these ids: ``id``, ``prompt`` and ``correction`` (None where the row
    has none, or the table has no such column), in the order of ``row_ids``.

    Ids not found (or of another task type) are left out, and so are rows an erasure marked: their text is
    never read.

    Raises:
        LookupError: The table does not exist.
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    found = _column_types(engine, table)
    _, t, _, _ = log_tables(table)
    correction = t.c.correction if "correction" in found else sa.null().label("correction")
    query = sa.select(t.c.id, t.c.prompt, correction).where(t.c.task_type == task_type, not_erased(t, table))
    wanted = list(dict.fromkeys(str(i) for i in row_ids))
    rows: dict[str, dict[str, Any]] = {}
    with connect(engine) as conn:
        for i in range(0, len(wanted), 5000):
            for r in conn.execute(query.where(t.c.id.in_(wanted[i : i + 5000]))):
                rows[r.id] = {"id": r.id, "prompt": r.prompt, "correction": r.correction}
    return [rows[i] for i in wanted if i in rows]
