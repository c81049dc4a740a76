"""Benchmark reading the interaction log into pandas: pandas.read_sql vs Arrow-native readers.

Usage::

    . scripts/env.sh && python benchmarks/bench_read.py [--rows 1000000] [--repeat 3] [--sqlite-rows 1000000]

Builds a uniquely named table of ``--rows`` synthetic log rows in the local PostgreSQL (the warehouse schema,
filled by one ``INSERT ... SELECT generate_series``: prompts and responses of 60-300 characters with some
non-ASCII text, nulls in every nullable column), then reads it back two ways, the whole table and a filtered
``task_type = ... AND timestamp >= ...`` query ordered like ``warehouse.read_interactions``, with:

- ``read_sql``: ``pandas.read_sql(select, conn)`` on a SQLAlchemy ``postgresql+psycopg`` engine (the baseline);
- ``read_sql_psycopg2``: the same on psycopg2, the driver the Airflow postgres hook's engine uses;
- ``adbc``: ``adbc_driver_postgresql.dbapi``, ``cursor.fetch_arrow_table().to_pandas()``, nothing else;
- ``read_frame``: ``ftops.sqlread.read_frame``, what ships (ADBC plus the table check and dtype fix-ups);
- ``connectorx``: ``connectorx.read_sql(..., return_type="arrow").to_pandas()``; it takes no bind parameters,
  so the filter's values are rendered into the SQL text here (fine for a benchmark, not for library code);
- ``duckdb``: DuckDB's postgres scanner, if its extension can be loaded (it is downloaded on first use).

Then the same for SQLite (``--sqlite-rows`` rows copied into a temporary file through the warehouse code):
``read_sql`` vs ``adbc_sqlite`` (``adbc-driver-sqlite``) vs ``connectorx``.

Each read runs in its own fresh Python process, so peak memory is that read's alone: the child imports what it
needs, opens the engine and reflects the table (untimed), records its resident memory (``rss before``), reads
once (timed), and reports its peak resident memory (``peak RSS``, absolute, nothing subtracted) and a content
hash of the frame. The peak is ``VmHWM`` from ``/proc/self/status``, not ``getrusage(RUSAGE_SELF).ru_maxrss``:
on Linux a child's ``ru_maxrss`` starts at the parent's RSS at ``fork`` and survives ``exec``, so after the
parent has copied rows into SQLite every child "peaks" at the parent's size (both are in the JSON each child
prints; ``VmHWM`` belongs to the new process image only). Methods run round-robin ``--repeat`` times; ratios are against ``read_sql`` in the same run (medians).
The table (and the SQLite file) are dropped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

DEFAULT_URL = os.environ.get("FTOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FILTER_TASK = "qa"
FILTER_SINCE = datetime(2026, 9, 1, tzinfo=UTC)  # timestamps span Aug-Oct 2026: ~2/3 of one task type's rows
PG_METHODS = ("read_sql", "read_sql_psycopg2", "adbc", "read_frame", "connectorx", "duckdb")
SQLITE_METHODS = ("read_sql", "adbc_sqlite", "connectorx")

# The warehouse's interaction table (ftops.warehouse._tables), with its two indexes.
DDL = """
create table {t} (
    id text primary key, timestamp timestamptz not null, task_type text not null, prompt text, response text,
    model_version text, user_id text, user_feedback integer, success boolean, confidence double precision,
    latency_ms integer, tokens_used integer, metadata text
)"""
# Spread values with multiplicative hashes of g so that neither order nor nulls are trivially regular.
FILL = """
insert into {t}
select 'int-' || lpad(g::text, 8, '0'),
       timestamptz '2026-08-01 00:00:00+00' + ((g * 7919) % 7776000) * interval '1 second',
       (array['qa', 'summarize', 'classify', 'translate', 'sentiment'])[(1 + (g * 31) % 5)::int],
       substr(repeat(md5(g::text) || ' please answer about ' || (g % 977) || case when g % 40 = 0
              then ' — café naïve 東京 ✓ ' else ' ' end, 12), 1, (60 + (g * 7907) % 241)::int),
       case when g % 97 = 0 then null else
       substr(repeat(md5((g + 1)::text) || ' the answer is ' || (g % 613) || ' ', 12), 1, (60 + (g * 7883) % 241)::int) end,
       'ftops-' || (array['qa', 'summarize'])[(1 + g % 2)::int] || '/' || (1 + g % 4),
       case when g % 53 = 0 then null else 'user-' || (g * 13) % 20000 end,
       case when g % 3 = 0 then null else (g % 5) - 2 end,
       case when g % 89 = 0 then null else g % 11 <> 0 end,
       case when g % 7 = 0 then null else ((g * 37) % 1000) / 1000.0 end,
       50 + (g * 101) % 4000,
       20 + (g * 17) % 2000,
       case when g % 2 = 0 then null else '{{"ab": "' || (g % 2) || '", "len": ' || (g % 300) || '}}' end
from generate_series(1::bigint, {rows}) as g"""


# --------------------------------------------------------------------------------------------------- children


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(key)


def _query(engine: sa.Engine, table: str, variant: str) -> sa.Select[Any]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    query = sa.select(t)
    if variant == "filtered":
        query = query.where(t.c.task_type == FILTER_TASK, t.c.timestamp >= FILTER_SINCE).order_by(t.c.timestamp, t.c.id)
    return query


def _compiled(query: sa.Select[Any], dialect: Any) -> tuple[str, list[Any]]:
    compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    return str(compiled), [compiled.params[n] for n in compiled.positiontup or ()]


def child(method: str, url: str, table: str, variant: str) -> dict[str, Any]:
    """Set up one method, then time one read; the caller runs this in a fresh process."""
    import pandas as pd

    engine = sa.create_engine(url)
    query = _query(engine, table, variant)
    libpq_uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    read: Any
    if method == "read_sql" or method == "read_sql_psycopg2":
        if method == "read_sql_psycopg2":
            engine = sa.create_engine(engine.url.set(drivername="postgresql+psycopg2"))
        conn = engine.connect()

        def read() -> pd.DataFrame:
            return pd.read_sql(query, conn)
    elif method == "adbc":
        import adbc_driver_postgresql.dbapi as adbc
        from sqlalchemy.dialects.postgresql.base import PGDialect

        sql, params = _compiled(query, PGDialect(paramstyle="numeric_dollar"))

        def read() -> pd.DataFrame:
            with adbc.connect(libpq_uri) as aconn, aconn.cursor() as cur:
                cur.execute(sql, params or None)
                return cur.fetch_arrow_table().to_pandas()
    elif method == "read_frame":
        import adbc_driver_postgresql.dbapi  # noqa: F401  (imported untimed, like pandas for the baseline)
        import pyarrow  # noqa: F401

        from ftops.warehouse.sqlread import read_frame

        def read() -> pd.DataFrame:
            return read_frame(engine, query)
    elif method == "adbc_sqlite":
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        sql, params = _compiled(query, engine.dialect)
        path = engine.url.database

        def read() -> pd.DataFrame:
            with adbc_sqlite.connect(path) as aconn, aconn.cursor() as cur:
                cur.execute(sql, params or None)
                return cur.fetch_arrow_table().to_pandas()
    elif method == "connectorx":
        import connectorx as cx

        literal = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        cx_uri = f"sqlite://{engine.url.database}" if engine.dialect.name == "sqlite" else libpq_uri

        def read() -> pd.DataFrame:
            return cx.read_sql(cx_uri, literal, return_type="arrow").to_pandas()
    elif method == "duckdb":
        import duckdb

        con = duckdb.connect()
        try:
            con.sql("INSTALL postgres")
            con.sql("LOAD postgres")
        except duckdb.Error as exc:
            return {"skipped": f"postgres extension unavailable: {str(exc).splitlines()[0]}"}
        con.sql(f"ATTACH '{libpq_uri}' AS pg (TYPE postgres, READ_ONLY)")
        literal = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))

        def read() -> pd.DataFrame:
            return con.sql(literal.replace(f"FROM {table}", f"FROM pg.public.{table}")).df()
    else:
        raise SystemExit(f"unknown method {method!r}")
    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    frame = read()
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")  # this process image's own high-water mark (see the module docstring)
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    content = int(pd.util.hash_pandas_object(frame, index=False).sum())
    return {"seconds": seconds, "rss_before_mb": rss_before, "peak_mb": peak, "ru_maxrss_mb": ru_maxrss,
            "rows": len(frame), "columns": list(frame.columns), "dtypes": [str(d) for d in frame.dtypes],
            "hash": content}  # fmt: skip


# ----------------------------------------------------------------------------------------------------- parent


def run_child(method: str, url: str, table: str, variant: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", method, "--url", url, "--table", table, "--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(label: str, url: str, table: str, methods: tuple[str, ...], repeat: int) -> None:
    for variant in ("full", "filtered"):
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        skipped: dict[str, str] = {}
        for _ in range(repeat):
            for m in methods:  # round-robin, so that load spikes spread over all methods
                if m in skipped:
                    continue
                r = run_child(m, url, table, variant)
                if "skipped" in r or "error" in r:
                    skipped[m] = r.get("skipped") or f"error: {r['error']}"
                else:
                    results[m].append(r)
        base = results["read_sql"]
        base_s = statistics.median(r["seconds"] for r in base)
        base_peak = statistics.median(r["peak_mb"] for r in base)
        print(f"\n{label}, {variant}: {base[0]['rows']:,} rows, {repeat} runs each, load {_loadavg()}")
        print("| method | rows | best s | median s | speed-up vs read_sql (median) | RSS before MB "
              "| peak RSS MB (median) | peak vs read_sql | same content as read_sql | same dtypes |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for m in methods:
            if m in skipped:
                print(f"| {m} | {skipped[m]} |")
                continue
            rs = results[m]
            secs = [r["seconds"] for r in rs]
            med, peak = statistics.median(secs), statistics.median(r["peak_mb"] for r in rs)
            before = statistics.median(r["rss_before_mb"] for r in rs)
            same = "yes" if rs[0]["hash"] == base[0]["hash"] and rs[0]["columns"] == base[0]["columns"] else "no"
            dtypes = "yes" if rs[0]["dtypes"] == base[0]["dtypes"] else _dtype_diff(base[0], rs[0])
            print(f"| {m} | {rs[0]['rows']:,} | {min(secs):.2f} | {med:.2f} | {base_s / med:.1f}× | {before:.0f} | {peak:.0f} "
                  f"| {peak / base_peak:.2f} | {same} | {dtypes} |")  # fmt: skip


def _dtype_diff(base: dict[str, Any], other: dict[str, Any]) -> str:
    diffs = [
        f"{c}: {a}→{b}" for c, a, b in zip(base["columns"], base["dtypes"], other["dtypes"], strict=False) if a != b
    ]
    return "; ".join(diffs) or "columns differ"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="SQLAlchemy URL of the PostgreSQL database")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sqlite-rows", type=int, default=1_000_000, help="0 skips the SQLite part")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default=",".join(PG_METHODS), help="PostgreSQL methods, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.table, args.variant)))
        return 0

    from ftops.warehouse import schema as wh

    methods = tuple(m for m in args.methods.split(",") if m)
    if "read_sql" not in methods:
        methods = ("read_sql", *methods)
    engine = sa.create_engine(args.url)
    table = f"bench_read_{os.getpid()}_{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        try:
            start = time.perf_counter()
            with engine.begin() as conn:
                conn.exec_driver_sql(DDL.format(t=table))
                conn.execute(sa.text(FILL.format(t=table, rows=args.rows)))  # text(): escapes % for psycopg
                conn.exec_driver_sql(f"create index on {table} (timestamp)")
                conn.exec_driver_sql(f"create index on {table} (task_type)")
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(f"vacuum analyze {table}")
                size = conn.exec_driver_sql(f"select pg_size_pretty(pg_total_relation_size('{table}'))").scalar()
            print(f"PostgreSQL table {table}: {args.rows:,} rows, {size}, built in {time.perf_counter() - start:.1f} s")
            columns = [c["name"] for c in sa.inspect(engine).get_columns(table)]
            assert tuple(columns) == wh.INTERACTION_COLUMNS, f"schema drifted from the warehouse: {columns}"
            bench("PostgreSQL", args.url, table, methods, args.repeat)

            if args.sqlite_rows:
                start = time.perf_counter()
                sqlite_url = f"sqlite:///{tmp}/bench.db"
                sqlite_engine = sa.create_engine(sqlite_url)
                wh.ensure_schema(sqlite_engine, table)
                source = sa.Table(table, sa.MetaData(), autoload_with=engine)
                with engine.connect().execution_options(yield_per=100_000) as conn:
                    result = conn.execute(sa.select(source).order_by(source.c.id).limit(args.sqlite_rows))
                    for part in result.mappings().partitions():
                        wh.insert_interactions(sqlite_engine, part, table)
                print(f"\nSQLite file: {args.sqlite_rows:,} rows copied in {time.perf_counter() - start:.1f} s")
                bench("SQLite", sqlite_url, table, SQLITE_METHODS, args.repeat)
        finally:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"drop table if exists {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
