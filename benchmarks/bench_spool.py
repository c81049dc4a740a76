"""Spool flush throughput and memory: this code against the spool as it was at a given git revision, one run.

    python benchmarks/bench_spool.py --rows 20000 --baseline 14a6b13

Interleaved repeats, for the spool at a git revision and this tree: spool rows while the warehouse is down,
count them as ``/healthz`` does (the old ``spooled()`` read every file; ``health()`` reads none), and flush the
same 20 000-row segment into a fresh SQLite warehouse; then the flush's peak Python memory (tracemalloc).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from ftops.warehouse.schema import ensure_schema

DOWN_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"


def _module(rev: str) -> ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:include/ftops/serving/interaction_log.py"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "baseline_interaction_log.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_interaction_log", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _spool(logger_cls: type, spool: Path, rows: int) -> dict[str, float]:
    """Spool rows while the warehouse is down; the rate in, and the cost of the count /healthz shows."""
    with logger_cls(sa.create_engine(DOWN_URL), spool_dir=spool, flush_rows=10**9) as down:
        t0 = time.perf_counter()
        for i in range(rows):
            down.log(task_type="summarization", prompt=f"prompt {i} " + "words " * 60, response="an answer " * 10,
                     model_version="ftops-summarization/3", user_id=f"user-{i % 500}", success=True,
                     latency_ms=40, tokens_used=120, metadata={"gateway": "ftops serve", "role": "champion"})  # fmt: skip
        in_rows_s = rows / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(20):
            getattr(down, "health", down.spooled)()
        return {"in_rows_s": in_rows_s, "count_ms": (time.perf_counter() - t0) / 20 * 1000}


def _flush(logger_cls: type, spool: Path, rows: int, trace: bool) -> float:
    """Flush a copy of the spool into a fresh SQLite warehouse: rows/s, or the peak Python memory in MiB."""
    d = Path(tempfile.mkdtemp())
    shutil.copytree(spool, d / "spool")
    engine = sa.create_engine(f"sqlite:///{d / 'w.db'}")
    ensure_schema(engine)
    logger = logger_cls(engine, spool_dir=d / "spool")
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    assert logger.flush() == rows
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    logger.close()
    shutil.rmtree(d)
    return peak if trace else rows / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000, help="rows flushed")
    ap.add_argument("--spool-rows", type=int, default=2_000, help="rows spooled (one fsync each) per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default="14a6b13", help="git revision of the spool to compare with")
    args = ap.parse_args()
    from ftops.serving.interaction_log import InteractionLogger

    logging.disable(logging.WARNING)  # "rows stay spooled" while the warehouse is down, on purpose
    loggers = {f"baseline {args.baseline}": _module(args.baseline).InteractionLogger, "this tree": InteractionLogger}
    base = Path(tempfile.mkdtemp())
    _spool(InteractionLogger, base / "big", args.rows)  # the same segment for both (the line format is unchanged)
    results: dict[str, dict[str, list[float]]] = {n: {"in": [], "count": [], "flush": []} for n in loggers}
    for r in range(args.repeats):  # interleaved: the disk is shared, so both see the same noise
        for name, cls in loggers.items():
            spooled = _spool(cls, base / f"{name}-{r}".replace(" ", "_"), args.spool_rows)
            results[name]["in"].append(spooled["in_rows_s"])
            results[name]["count"].append(spooled["count_ms"])
            results[name]["flush"].append(_flush(cls, base / "big", args.rows, trace=False))
    for name, cls in loggers.items():
        m = {k: statistics.median(v) for k, v in results[name].items()}
        print(f"{name:18s} spool in {m['in']:6.0f} rows/s (fsync each); count for /healthz {m['count']:8.3f} ms; "
              f"flush {args.rows} rows {m['flush']:6.0f} rows/s (median of {args.repeats}: "
              f"{', '.join(f'{x:.0f}' for x in results[name]['flush'])}); peak Python memory of the flush "
              f"{_flush(cls, base / 'big', args.rows, trace=True):5.1f} MiB")  # fmt: skip
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
