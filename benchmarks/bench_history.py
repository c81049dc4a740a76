"""The leakage guard's history: every published version's examples, read through DVC or from the worker's cache.

Publishes ``--versions`` dataset versions of ``--examples`` examples each (a local git + DVC registry with a
bare git remote, under a temporary FTOPS_HOME), then times ``published_examples`` three ways, in the same run:

- **cold**: a fresh worker (empty ``FTOPS_HOME/cache/published``): every version read through DVC, as every
  curation run did before the cache;
- **warm**: the next run on that worker: every version from the cache (the baseline of the ratio is cold);
- **one new**: one more version published, then a run: one DVC read, the rest cached (a nightly's case).

Run: ``. scripts/env.sh && python benchmarks/bench_history.py [--versions 30] [--examples 500]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=30)
    ap.add_argument("--examples", type=int, default=500)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ftops-bench-history-"))
    os.environ["FTOPS_HOME"] = str(home)
    os.environ.pop("FTOPS_CONFIG", None)
    from ftops.core.config import load_config
    from ftops.curation.curate import to_example
    from ftops.pipeline.common import dataset_registry
    from ftops.pipeline.curate import published_examples

    cfg, task = load_config(), "qa"
    registry = dataset_registry(cfg)

    def publish(v: int) -> None:
        rows = [to_example(f"version {v} question {i}: what is {i} plus {v}?", f"{i + v}") for i in range(args.examples)]
        split = int(len(rows) * 0.8)
        registry.publish(task, rows[:split], rows[split:], {"version": v})

    started = time.perf_counter()
    for v in range(1, args.versions + 1):
        publish(v)
    print(f"published {args.versions} versions of {args.examples} examples in {time.perf_counter() - started:.1f} s")

    def timed() -> tuple[float, int]:
        t = time.perf_counter()
        n = len(published_examples(cfg, task))
        return time.perf_counter() - t, n

    cold, n = timed()
    warm, n_warm = timed()
    publish(args.versions + 1)
    one_new, n_new = timed()
    shutil.rmtree(home / "cache" / "published")
    cold_again, _ = timed()
    assert n == n_warm and n_new == n + args.examples, (n, n_warm, n_new)
    base = min(cold, cold_again)
    print(f"history of {n} examples in {args.versions} versions:")
    print(f"  cold (every version through DVC)   {base:7.3f} s   1.00x   (runs: {cold:.3f}, {cold_again:.3f} s)")
    print(f"  warm (every version cached)        {warm:7.3f} s   {warm / base:.3f}x")
    print(f"  one new version, the rest cached   {one_new:7.3f} s   {one_new / base:.3f}x")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
