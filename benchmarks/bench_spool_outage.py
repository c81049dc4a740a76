"""An hour of gateway traffic while the warehouse is down, then its recovery: this spool against an older one.

    python benchmarks/bench_spool_outage.py --rate 20 --minutes 60 --baseline 14a6b13

Each variant runs in its own process (so its memory is its own): an :class:`InteractionLogger` whose warehouse
is unreachable (a PostgreSQL port nobody listens on) and whose background thread tries to flush every
``--flush-every`` seconds, as in ``ftops serve``. It spools ``rate × minutes × 60`` rows, as fast as the disk
takes them (one fsync each), in 12 windows of 5 simulated minutes. Per window it prints the rows/s appended,
the process's resident memory and what ``/healthz`` pays to report the spool (the older spool counted the lines
of every file; this one keeps running counts), median of 20 calls. Then the warehouse comes back (a fresh
SQLite file) and one flush moves everything: its rows/s and the process's peak memory. Flat columns are the
target; the ratios are within one run, both variants on the same disk at the same time of day.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

DOWN_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"
WINDOWS = 12


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(rev: str | None, rows: int, flush_every: float) -> dict[str, object]:
    """One variant in this process: ``rev`` None = this tree, else the spool module at that git revision."""
    if rev is None:
        from ftops.serving.interaction_log import InteractionLogger
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_spool import _module

        InteractionLogger = _module(rev).InteractionLogger  # noqa: N806 - a class, chosen at run time
    from ftops.warehouse.schema import ensure_schema

    logging.disable(logging.WARNING)  # "rows stay spooled" every few seconds, on purpose
    tmp = Path(tempfile.mkdtemp())
    logger = InteractionLogger(sa.create_engine(DOWN_URL), spool_dir=tmp / "spool", flush_every_s=flush_every)
    logger.start()  # the background flusher keeps failing against the missing warehouse, as in an outage
    count = getattr(logger, "health", logger.spooled)  # what /healthz calls
    per = rows // WINDOWS
    windows = []
    for w in range(WINDOWS):
        t0 = time.perf_counter()
        for i in range(w * per, (w + 1) * per):
            logger.log(task_type="summarization", prompt=f"prompt {i} " + "words " * 60, response="an answer " * 10,
                       model_version="ftops-summarization/3", user_id=f"user-{i % 500}", success=True,
                       latency_ms=40, tokens_used=120, metadata={"gateway": "ftops serve", "role": "champion"})  # fmt: skip
        rate = per / (time.perf_counter() - t0)
        timings = []
        for _ in range(20):
            t1 = time.perf_counter()
            count()
            timings.append((time.perf_counter() - t1) * 1000)
        files = len(list((tmp / "spool").glob("*.jsonl")))
        windows.append({"rows_s": rate, "rss_mib": _rss_mib(), "healthz_ms": statistics.median(timings), "files": files})
    back = sa.create_engine(f"sqlite:///{tmp / 'warehouse.db'}")
    ensure_schema(back)
    logger.engine = back  # the warehouse is back
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    moved = logger.flush()
    seconds = time.perf_counter() - t0
    logger.close()
    with back.connect() as conn:
        stored = conn.scalar(sa.text("select count(*) from interactions"))
    return {"windows": windows, "flushed": moved, "stored": stored, "flush_rows_s": moved / seconds,
            "peak_rss_mib_before_flush": before,
            "peak_rss_mib_after_flush": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20, help="gateway calls per second during the outage")
    ap.add_argument("--minutes", type=float, default=60, help="how long the warehouse is down")
    ap.add_argument("--flush-every", type=float, default=2.0, help="serving.flush_every_s")
    ap.add_argument("--baseline", default="14a6b13", help="git revision of the spool to compare with")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = ap.parse_args()
    rows = int(args.rate * args.minutes * 60) // WINDOWS * WINDOWS
    if args.variant is not None:
        print(json.dumps(run_variant(None if args.variant == "tree" else args.variant, rows, args.flush_every)))
        return
    print(f"{rows} rows: {args.minutes:g} min at {args.rate:g} calls/s with the warehouse down, then one flush")
    results = {}
    for name, variant in ((f"baseline {args.baseline}", args.baseline), ("this tree", "tree")):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--rate", str(args.rate), "--minutes",
                              str(args.minutes), "--flush-every", str(args.flush_every)], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        results[name] = json.loads(out.strip().splitlines()[-1])
    for name, r in results.items():
        print(f"\n{name}: window (5 simulated min)  rows/s in   RSS MiB   /healthz ms   spool files")
        for w, m in enumerate(r["windows"], 1):
            print(f"  {w:2d}  {m['rows_s']:10.0f}  {m['rss_mib']:8.1f}  {m['healthz_ms']:11.3f}  {m['files']:6d}")
        first, last = r["windows"][0], r["windows"][-1]
        print(f"  last/first window: rows/s {last['rows_s'] / first['rows_s']:.2f}x, RSS "
              f"{last['rss_mib'] / first['rss_mib']:.2f}x, /healthz {last['healthz_ms'] / first['healthz_ms']:.1f}x")
        print(f"  recovery: {r['flushed']} rows flushed ({r['stored']} stored) at {r['flush_rows_s']:.0f} rows/s; "
              f"peak RSS {r['peak_rss_mib_before_flush']:.0f} MiB before the flush, "
              f"{r['peak_rss_mib_after_flush']:.0f} MiB after")  # fmt: skip


if __name__ == "__main__":
    main()
