"""Spool flush throughput and memory: this code against the spool as it was at a given git revision, one run.

    python benchmarks/bench_spool.py --rows 20000 --baseline 14a6b13

Both loggers spool the same rows while the warehouse is down (a long outage, as one segment), then flush them
into a fresh SQLite warehouse; the peak Python memory of the flush is traced (tracemalloc) in a second pass.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def _run(logger_cls: type, rows: int, trace: bool) -> tuple[float, int]:
    d = Path(tempfile.mkdtemp())
    with logger_cls(sa.create_engine(DOWN_URL), spool_dir=d / "spool", flush_rows=10**9) as down:
        for i in range(rows):
            down.log(task_type="summarization", prompt=f"prompt {i} " + "words " * 60, response="an answer " * 10,
                     model_version="ftops-summarization/3", user_id=f"user-{i % 500}", success=True,
                     latency_ms=40, tokens_used=120, metadata={"gateway": "ftops serve", "role": "champion"})  # fmt: skip
    engine = sa.create_engine(f"sqlite:///{d / 'w.db'}")
    ensure_schema(engine)
    logger = logger_cls(engine, spool_dir=d / "spool")
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    assert logger.flush() == rows
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    logger.close()
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--baseline", default="14a6b13", help="git revision of the spool to compare with")
    args = ap.parse_args()
    from ftops.serving.interaction_log import InteractionLogger

    old = _module(args.baseline).InteractionLogger
    for name, cls in (("baseline " + args.baseline, old), ("this tree", InteractionLogger)):
        s, _ = _run(cls, args.rows, trace=False)
        _, peak = _run(cls, args.rows, trace=True)
        print(f"{name:20s} flush {args.rows} rows: {s:6.2f} s = {args.rows / s:8.0f} rows/s; "
              f"peak Python memory of the flush {peak / 2**20:6.1f} MiB")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
