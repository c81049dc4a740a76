"""The nightly at scale: curating 10 000 new rows in a warehouse of 1 000 000, cache warm (issue 13).

For each warehouse size (``--sizes``, default 100 000 then 1 000 000) the script builds a warehouse table of
its own in the local PostgreSQL (``--sqlite``: an SQLite file), marks its history as curated, adds
``--new`` rows after the watermark, warms the embedding cache for them, and times the nightly on them:
``curate_window`` + ``publish_window``, as the DAG runs them, in total and per phase (the summary's
``timings_s``). The first size is the baseline: the figure "vs baseline" is the time of the same nightly on
the same new rows in the bigger warehouse over the time in the smaller one, measured in the same run
(goal ≈ 1.0: the cost grows with the new rows, not the warehouse); the absolute time is compared with the
5-minute goal. ``--rounds`` > 1 repeats the nightly with the next day's new rows, sizes alternating.

How the history is built, fast and out of the measured figure:

1. ``--distinct`` rows (default 20 000) from ``ftops_dev.simulate.generate_interactions`` (per-row Python),
   stamped over the 30 days before the watermark, are curated once for real (``curate_window`` +
   ``publish_window``): the pool, the watermark and dataset version 1 are what a first curation leaves.
2. The rest of the history is those rows replicated in SQL (``INSERT ... SELECT ... generate_series`` on
   PostgreSQL, batched ``executemany`` on SQLite) with new ids and timestamps shifted back by 30 days per
   copy, all before the watermark. A copy is an exact duplicate of a curated row, which a full curation of
   the whole history would reject as a duplicate, so the curated state is what curating all of it would
   give (up to which row id stands for a duplicate), without curating a million rows first. The catch,
   said plainly: the pool then holds ~the distinct rows' candidates whatever the warehouse size, so this
   measures what the nightly pays for the *table's* size (reads, indexes, erasure checks), not for a pool
   that grows with more distinct history. ``--distinct-share 0.1`` builds each size's history from 10 % of
   its size in distinct rows instead (curated for real, so that takes longer): the pool then grows with the
   warehouse, as it would with real traffic.

The embedding cache is warmed by a dry run of the same window (``dry_run=True``: nothing is written but the
cache), with a hash-based stand-in registered under the configured model's name (the real
all-MiniLM-L6-v2 embeds ~80 prompts/s on 2 cores: minutes per warm-up; ``--real-embedder-warmup`` uses it).
The measured nightly gets the configured ``SentenceEmbedder``, wrapped to count what it embeds: with a warm
cache that is 0 and the model never loads. The stand-in's vectors change which prompts count as near
duplicates, not the work of a warm run.

Run: ``. scripts/env.sh && python benchmarks/bench_nightly.py`` (PostgreSQL at ``FTOPS_TEST_POSTGRES_URL``,
default the local ``test`` database; ``--sizes 20000,50000 --new 2000`` for a quick try)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_curation import CountingEmbedder, HashEmbedder

TASK = "city_extraction"
T0 = datetime(2026, 11, 1, tzinfo=UTC)  # the watermark after the history's curation
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PHASES = ("read", "read_history", "rules", "scrub", "dedup", "embed", "select_and_split", "validate_raw",
          "validate_curated", "version", "pool")  # fmt: skip


class Warehouse:
    """One size's warehouse table, its state tables and its dataset registry (a folder of its own)."""

    def __init__(self, engine: sa.Engine, table: str, size: int, folder: Path, cache: Path) -> None:
        from ftops.core.config import FtopsConfig, StorageConfig

        self.engine, self.table, self.size = engine, table, size
        folder.mkdir(parents=True, exist_ok=True)
        self.cfg = FtopsConfig(interactions_table=table, storage=StorageConfig(
            dataset_repo=str(folder / "datasets"), dvc_remote=str(folder / "remote"), embedding_cache=str(cache)))  # fmt: skip
        self.fill_s = self.first_s = 0.0

    def fill(self, distinct: int, warm_embedder: Any) -> None:
        """The history: ``distinct`` simulated rows curated for real, then replicated to ``size`` rows."""
        from ftops_dev.simulate import generate_interactions

        from ftops.pipeline.curate import curate_window, publish_window
        from ftops.warehouse.schema import ensure_schema, insert_interactions

        ensure_schema(self.engine, self.table)
        seed = generate_interactions(min(distinct, self.size), seed=1, task_types=[TASK], start=T0, days=30)
        insert_interactions(self.engine, seed, self.table)
        started = time.perf_counter()
        curate_window(self.engine, self.cfg, TASK, run_key="history", now=T0, embedder=warm_embedder)
        first = publish_window(self.engine, self.cfg, TASK, run_key="history")
        self.first_s = time.perf_counter() - started
        self.first_status, self.pool = first["status"], first.get("pool_size")
        started = time.perf_counter()
        self._replicate(seed, self.size - len(seed))
        self.fill_s = time.perf_counter() - started

    def _replicate(self, seed: list[dict[str, Any]], extra: int) -> None:
        if extra <= 0:
            return
        copies = -(-extra // len(seed))
        if self.engine.dialect.name == "postgresql":
            from ftops.warehouse.schema import INTERACTION_COLUMNS

            cols = ", ".join(f'"{c}"' for c in INTERACTION_COLUMNS if c not in ("id", "timestamp"))
            with self.engine.begin() as conn:
                conn.execute(sa.text(
                    f'INSERT INTO "{self.table}" (id, "timestamp", {cols}) '
                    f"SELECT md5(s.id || ':' || g)::uuid::text, s.\"timestamp\" - g * interval '30 days', {cols} "
                    f'FROM (SELECT * FROM "{self.table}" ORDER BY id LIMIT :n) s, generate_series(1, :copies) g '
                    f"ORDER BY g, s.id LIMIT :extra"
                ), {"n": len(seed), "copies": copies, "extra": extra})  # fmt: skip
                conn.execute(sa.text(f'ANALYZE "{self.table}"'))
            return
        from ftops.warehouse.schema import INTERACTION_COLUMNS, log_tables

        _, t, _, _ = log_tables(self.table)
        batch: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            for g in range(1, copies + 1):
                for row in seed:
                    if extra == 0:
                        break
                    extra -= 1
                    copy = {c: row.get(c) for c in INTERACTION_COLUMNS}
                    copy["id"] = hashlib.md5(f"{row['id']}:{g}".encode()).hexdigest()  # noqa: S324 - an id, not security
                    copy["timestamp"] = row["timestamp"] - timedelta(days=30 * g)
                    batch.append(copy)
                    if len(batch) == 20_000:
                        conn.execute(sa.insert(t), batch)
                        batch = []
            if batch:
                conn.execute(sa.insert(t), batch)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(sa.text(f'SELECT count(*) FROM "{self.table}"')))

    def drop(self) -> None:
        with self.engine.begin() as conn:
            for suffix in ("_quarantine", "_curated", ""):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}{suffix}"'))
            for shared in ("ftops_curation_runs", "ftops_curation_staged"):
                conn.execute(sa.text(f"DELETE FROM {shared} WHERE log_table = :t"), {"t": self.table})


def nightly(wh: Warehouse, day: int, new_rows: list[dict[str, Any]], warm_embedder: Any, real: Any) -> dict[str, Any]:
    """Insert the day's new rows, warm the cache with a dry run, then time curate_window + publish_window."""
    from ftops.pipeline.curate import curate_window, publish_window
    from ftops.warehouse.schema import insert_interactions

    insert_interactions(wh.engine, new_rows, wh.table)
    now = T0 + timedelta(days=day)
    warm_started = time.perf_counter()
    curate_window(wh.engine, wh.cfg, TASK, run_key=f"warm-{day}", now=now, dry_run=True, embedder=warm_embedder)
    warm_s = time.perf_counter() - warm_started
    counting = CountingEmbedder(real, wh.cfg.curation.embedding_model)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    curated = curate_window(wh.engine, wh.cfg, TASK, run_key=f"night-{day}", now=now, embedder=counting)
    curate_s = time.perf_counter() - started
    result = publish_window(wh.engine, wh.cfg, TASK, run_key=f"night-{day}") if curated["staged"] else curated
    total = time.perf_counter() - started
    return {"size": wh.size, "day": day, "total": total, "curate": curate_s, "publish": total - curate_s,
            "warm_s": warm_s, "embedded": counting.count, "load": load, "result": result}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="warehouse sizes; the first is the baseline")
    parser.add_argument("--new", type=int, default=10_000, help="new rows per nightly")
    parser.add_argument("--distinct", type=int, default=20_000, help="distinct simulated rows behind the history")
    parser.add_argument("--distinct-share", type=float, default=None,
                        help="distinct rows as a share of each size instead (the pool then grows with the warehouse)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="nightlies per size (each with the next day's rows)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite files instead of PostgreSQL")
    parser.add_argument("--real-embedder-warmup", action="store_true", help="warm the cache with the real model")
    parser.add_argument("--keep", action="store_true", help="keep the tables (default: dropped at the end)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    home = Path(os.environ.setdefault("FTOPS_HOME", tempfile.mkdtemp(prefix="ftops-nightly-")))
    folder = Path(tempfile.mkdtemp(prefix="bench-nightly-", dir=home))

    from ftops_dev.simulate import generate_interactions

    from ftops.core.config import FtopsConfig
    from ftops.curation.embedding import SentenceEmbedder

    model = FtopsConfig().curation.embedding_model
    real = SentenceEmbedder(model)
    warm_embedder = real if args.real_embedder_warmup else HashEmbedder(model)
    cache = folder / "embeddings.db"  # one cache for every size: the same new rows are warmed once
    started = time.perf_counter()
    dim = real.dim  # curation asks the embedder its dim even when every vector is cached: loads the model
    load_s = time.perf_counter() - started
    print(f"# bench_nightly: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, {'SQLite' if args.sqlite else 'PostgreSQL'}, sizes {sizes}, "
          f"{args.new} new rows per night, history from "
          f"{args.distinct if args.distinct_share is None else f'{args.distinct_share:.0%} of its size in'} distinct rows, "
          f"cache warmed with {'the real model' if args.real_embedder_warmup else 'a hash stand-in'} ({model}); "
          f"loading {model} (dim {dim}) took {load_s:.1f} s, before the measurements")  # fmt: skip
    houses = []
    try:
        for size in sizes:
            if args.sqlite:
                engine = sa.create_engine(f"sqlite:///{folder / f'warehouse_{size}.db'}")
            else:
                engine = sa.create_engine(os.environ.get("FTOPS_TEST_POSTGRES_URL", DEFAULT_PG))
            wh = Warehouse(engine, f"bench_nightly_{os.getpid()}_{size}", size, folder / str(size), cache)
            houses.append(wh)
            distinct = args.distinct if args.distinct_share is None else max(1, round(size * args.distinct_share))
            wh.fill(distinct, warm_embedder)
            print(f"{size:>9} rows: first curation of {distinct} distinct rows {wh.first_s:.1f} s "
                  f"({wh.first_status}, pool {wh.pool}); replicated in {wh.fill_s:.1f} s; {wh.count()} rows in the table",
                  flush=True)  # fmt: skip
        runs = []
        for day in range(1, args.rounds + 1):
            new_rows = generate_interactions(args.new, seed=100 + day, task_types=[TASK],
                                             start=T0 + timedelta(days=day), days=1)  # fmt: skip
            order = houses if day % 2 else houses[::-1]
            for wh in order:
                run = nightly(wh, day, new_rows, warm_embedder, real)
                runs.append(run)
                r = run["result"]
                print(f"day {day}, {wh.size:>9} rows: {run['total']:.1f} s (curate {run['curate']:.1f}, publish "
                      f"{run['publish']:.1f}), warm-up dry run {run['warm_s']:.1f} s, embedded {run['embedded']}, "
                      f"read {r['rows_read']}, status {r['status']}, load {run['load']:.2f}", flush=True)  # fmt: skip
        report(runs, sizes)
    finally:
        if not args.keep:
            for wh in houses:
                wh.drop()


def report(runs: list[dict[str, Any]], sizes: list[int]) -> None:
    base = sizes[0]
    print("\n| warehouse rows | day | load | total s | vs baseline | vs 5 min | curate s | publish s | embedded | "
          "rows read | status | accepted | pool |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_key = {(r["size"], r["day"]): r for r in runs}
    for r in runs:
        res, ratio = r["result"], r["total"] / by_key[(base, r["day"])]["total"]
        print(f"| {r['size']:,} | {r['day']} | {r['load']:.2f} | {r['total']:.1f} | {ratio:.2f}× | "
              f"{r['total'] / 300:.0%} | {r['curate']:.1f} | {r['publish']:.1f} | {r['embedded']} | "
              f"{res['rows_read']} | {res['status']} | {res.get('accepted')} | {res.get('pool_size')} |")  # fmt: skip
    print("\n| phase (s) | " + " | ".join(f"{r['size']:,} day {r['day']}" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for phase in PHASES:
        cells = [r["result"].get("timings_s", {}).get(phase) for r in runs]
        print(f"| {phase} | " + " | ".join("—" if c is None else f"{c:.2f}" for c in cells) + " |")
    rest = [r["total"] - sum(r["result"].get("timings_s", {}).values()) for r in runs]
    print("| rest (reading the pool, quarantine, staging, run state) | " + " | ".join(f"{c:.2f}" for c in rest) + " |")
    for size in sizes[1:]:
        ratios = [by_key[(size, d)]["total"] / by_key[(base, d)]["total"] for s, d in by_key if s == size]
        worst = max(by_key[(size, d)]["total"] for s, d in by_key if s == size)
        print(f"{size:,} vs {base:,} rows: time ratio {sorted(ratios)[len(ratios) // 2]:.2f}× (median of "
              f"{len(ratios)}); slowest nightly {worst:.1f} s against the 5-minute goal "
              f"({'met' if worst < 300 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
