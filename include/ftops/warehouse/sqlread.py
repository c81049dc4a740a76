"""Read a SQLAlchemy ``Select`` into a pandas DataFrame, through Arrow where that is measurably faster.

On PostgreSQL the query runs through ADBC (``adbc-driver-postgresql``): libpq's binary COPY/result format is
decoded straight into Arrow columns in C, then handed to pandas, instead of building one Python tuple per row
as ``pandas.read_sql`` over SQLAlchemy does. ``benchmarks/bench_read.py`` measured 1 000 000 log rows at 5.7×
the speed of ``pandas.read_sql`` (psycopg 3) and 0.29× its peak memory (``benchmarks/README.md``). Every
other dialect, the embedded SQLite default included, goes through ``pandas.read_sql``: ``adbc-driver-sqlite``
was 3.4× faster there but returned timestamps as text, booleans as floats, and the wrong rows for a bound
datetime filter, because SQLAlchemy stores SQLite datetimes as text in its own format.

The ADBC path returns what ``pandas.read_sql`` returns for the warehouse's types, dtypes included: the same
column names in the same order, ``int64`` for integers (``float64`` with NaN once a column has a null),
``bool`` (``object`` with ``None`` when a column has a null), ``datetime64[us, UTC]`` for ``timestamptz``,
pandas' default string dtype (NaN for null) for text, and ``object`` full of ``None`` for a column with no
non-null value or a result with no rows (read_sql infers dtypes from values, so it cannot do better there).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


log = logging.getLogger(__name__)


def read_frame(engine: sa.Engine, query: sa.sql.Select[Any]) -> pd.DataFrame:
    """Run ``query`` on ``engine`` and return the result as a DataFrame.

    PostgreSQL engines read through ADBC with the query's bound parameters passed as parameters (never
    interpolated into the SQL); other dialects use ``pandas.read_sql`` on a SQLAlchemy connection. The
    ADBC connection is opened from ``engine.url`` (user, password, host, port, database and any libpq
    query options), so an engine that authenticates through ``connect_args`` or a custom ``creator``
    cannot use it.

    Args:
        engine: Any SQLAlchemy engine.
        query: A ``select()``; its column labels become the frame's columns, in order.

    Returns:
        The result, equivalent to ``pandas.read_sql(query, conn)`` for the warehouse's column types
        (text, integers, floats, numeric, booleans, timestamps, dates, bytea, json, uuid), except that
        PostgreSQL ``timestamptz`` always comes back in UTC whatever the session time zone.

    Raises:
        LookupError: A table the query reads from does not exist (its name is in the message).
        TypeError: On PostgreSQL, a result column of a type whose values would differ from
            ``pandas.read_sql``'s (intervals, arrays, composites, other extension types).
    """
    import pandas as pd

    _require_tables(engine, query)
    start = time.perf_counter()
    if engine.dialect.name == "postgresql":
        frame = _read_postgres_adbc(engine.url, query)
        path = "adbc"
    else:
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn)
        path = "pandas.read_sql"
    log.info("read %d rows in %.2f s (%s, %s)", len(frame), time.perf_counter() - start, engine.dialect.name, path)
    return frame


def _require_tables(engine: sa.Engine, query: sa.sql.Select[Any]) -> None:
    """Raise LookupError naming the first table of ``query`` missing from the database."""
    from sqlalchemy.sql.util import find_tables

    inspector = sa.inspect(engine)
    for table in find_tables(query):
        if not inspector.has_table(table.name, schema=table.schema):
            name = f"{table.schema}.{table.name}" if table.schema else table.name
            raise LookupError(f"table {name!r} does not exist in {engine.url.render_as_string()}")


def _read_postgres_adbc(url: sa.URL, query: sa.sql.Select[Any]) -> pd.DataFrame:
    import adbc_driver_postgresql.dbapi as adbc
    from sqlalchemy.dialects.postgresql.base import PGDialect
    from sqlalchemy.sql.compiler import SQLCompiler

    # The driver-neutral PostgreSQL dialect with libpq's native $1, $2... placeholders; render_postcompile
    # expands IN lists and similar "expanding" parameters into one placeholder per value.
    compiled = query.compile(
        dialect=PGDialect(paramstyle="numeric_dollar"), compile_kwargs={"render_postcompile": True}
    )
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    # libpq reads a postgresql:// URI: drop SQLAlchemy's "+driver" suffix, keep password and query options.
    uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with adbc.connect(uri) as conn, conn.cursor() as cursor:
        cursor.execute(str(compiled), params or None)
        table = cursor.fetch_arrow_table()
    frame = _to_pandas_like_read_sql(table)
    # Name the columns as SQLAlchemy's result keys, which read_sql uses: they differ from the server's names
    # for literal_column() text and for labels PostgreSQL truncates at 63 bytes. SQLAlchemy only matches
    # keys by position when the compiled columns are "ordered" (not for text() fragments).
    sql_compiled = cast(SQLCompiler, compiled)
    keys = [entry.keyname for entry in sql_compiled._result_columns]
    if sql_compiled._ordered_columns and len(keys) == frame.shape[1] and all(keys):
        frame.columns = keys
    return frame


def _to_pandas_like_read_sql(table: pa.Table) -> pd.DataFrame:
    """Convert an ADBC result to the dtypes and Python values ``pandas.read_sql`` gives for the same rows."""
    import json
    import uuid

    import pyarrow as pa

    python_values: dict[int, Any] = {}
    for index, field in enumerate(table.schema):
        kind = field.type
        target = None
        if table.column(index).null_count == table.num_rows:
            # read_sql infers dtypes from values: a column with no non-null value (or no rows at all) is
            # object with None whatever its SQL type. Arrow's null type converts to exactly that.
            table = table.set_column(index, field.with_type(pa.null()), pa.nulls(table.num_rows))
        elif pa.types.is_integer(kind) and kind != pa.int64():
            target = pa.int64()  # read_sql: int64, or float64 with NaN once there is a null
        elif pa.types.is_float32(kind):
            target = pa.float64()
        elif isinstance(kind, pa.OpaqueType) and kind.type_name == "numeric":
            target = pa.float64()  # read_sql's coerce_float turns Decimal into float64
        elif isinstance(kind, pa.JsonType):
            python_values[index] = json.loads  # psycopg parses json/jsonb into dicts and lists
        elif isinstance(kind, pa.UuidType):
            python_values[index] = lambda raw: uuid.UUID(bytes=raw)
        elif not _converts_like_read_sql(kind):
            raise TypeError(
                f"column {field.name!r} has PostgreSQL type {_pg_type(field)} ({kind}), which the "
                "Arrow path does not convert like pandas.read_sql; cast it in the query"
            )
        if target is not None:
            column = table.column(index)
            if isinstance(column.type, pa.ExtensionType):
                column = column.cast(column.type.storage_type)
            table = table.set_column(index, field.with_type(target), column.cast(target))
    frame = table.to_pandas()
    for index, convert in python_values.items():
        frame.isetitem(index, frame.iloc[:, index].astype(object).map(convert, na_action="ignore"))
    return frame


def _converts_like_read_sql(kind: pa.DataType) -> bool:
    """Arrow types whose pandas conversion matches psycopg's values (bool, numbers, text, bytes, times)."""
    import pyarrow as pa

    if isinstance(kind, pa.BaseExtensionType) or pa.types.is_interval(kind):
        return False
    return (
        pa.types.is_boolean(kind) or pa.types.is_floating(kind) or pa.types.is_integer(kind)
        or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind)
        or pa.types.is_time(kind) or pa.types.is_null(kind)
    )  # fmt: skip


def _pg_type(field: pa.Field) -> str:
    metadata = field.metadata or {}
    return metadata.get(b"POSTGRESQL:type", b"?").decode()
