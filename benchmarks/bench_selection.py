"""Benchmark the greedy diversity selection: naive loop vs one FAISS search per candidate vs batched.

Usage::

    PYTHONPATH=include python benchmarks/bench_selection.py [--n 200000] [--k 500] [--threshold 0.9]

Data: ``--n`` random 384-d normalised rows with planted near duplicates. Most rows are noisy copies
(cosine about 0.98 to their base, about 0.96 to each other) of ``--bases`` random base vectors, and a few
fresh random rows are sprinkled through the list, so the ``k``-th pick arrives late and every candidate is
compared with a kept set of several hundred rows: the hard case. (On purely random rows nothing is ever a
duplicate, selection stops after ``k`` candidates, and ``n`` would not matter.)

The naive per-pair Python loop (about a minute at 200 000 candidates) is timed once: on the whole list when
a prefix run predicts under ``--naive-budget`` seconds, otherwise on a prefix and extrapolated linearly (the
kept set is full-sized after the first few thousand candidates, so per-candidate cost is then flat), and the
output says so. The two fast methods are timed ``--repeat`` times each, alternately, and reported by their
median. Every method's selection is checked against the others (on the prefix for an extrapolated naive run:
the greedy rule's decisions depend only on earlier candidates, so the selection on a prefix is the full
selection's indices below the prefix length).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from ftops_dev.baselines import select_diverse_faiss_per_candidate, select_diverse_naive

from ftops.curation.selection import select_diverse


def make_candidates(n: int, dim: int, bases: int, fresh: int, noise: float, seed: int) -> np.ndarray:
    """Build ``n`` normalised rows: noisy copies of ``bases`` base vectors plus about ``fresh`` fresh rows."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((bases, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    rows = base[rng.integers(bases, size=n)] + (noise / np.sqrt(dim)) * rng.standard_normal((n, dim)).astype(np.float32)
    is_fresh = rng.random(n) < fresh / n
    rows[is_fresh] = rng.standard_normal((int(is_fresh.sum()), dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    # float32 like the embedder's output (a float64 scalar above promotes the arithmetic to float64)
    return rows.astype(np.float32)


def timed(func: Callable[[], list[int]]) -> tuple[list[int], float]:
    """Run ``func`` once and return its result with the wall time in seconds."""
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


def spread(times: list[float]) -> str:
    """Describe repeated timings: how many, and their range."""
    return f"median of {len(times)}, range {min(times):.3f}-{max(times):.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="candidates")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--k", type=int, default=500, help="rows to select")
    parser.add_argument("--threshold", type=float, default=0.9, help="cosine at or above which rows duplicate")
    parser.add_argument("--bases", type=int, default=450, help="base vectors the near duplicates copy")
    parser.add_argument("--fresh", type=int, default=80, help="expected fresh random rows in the list")
    parser.add_argument("--noise", type=float, default=0.2, help="noise norm of a near duplicate")
    parser.add_argument("--block-size", type=int, default=1024, help="candidates per block (batched)")
    parser.add_argument("--naive-budget", type=float, default=300.0, help="seconds allowed for the full naive run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of the batched and per-candidate methods")
    parser.add_argument("--naive-prefix", type=int, default=10_000, help="candidates in the naive prefix run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    candidates = make_candidates(args.n, args.dim, args.bases, args.fresh, args.noise, args.seed)
    print(f"{args.n} candidates x {args.dim}-d, k={args.k}, threshold={args.threshold}")

    # The fast methods are timed --repeat times, alternately so that both see the same background load, and
    # reported by their median: one run of a fraction of a second is at the mercy of whatever else runs.
    batched_times: list[float] = []
    faiss_times: list[float] = []
    for _ in range(args.repeat):
        batched, seconds = timed(lambda: select_diverse(candidates, args.k, args.threshold, args.block_size))
        batched_times.append(seconds)
        per_candidate, seconds = timed(lambda: select_diverse_faiss_per_candidate(candidates, args.k, args.threshold))
        faiss_times.append(seconds)
    t_batched, t_faiss = statistics.median(batched_times), statistics.median(faiss_times)
    scanned = batched[-1] + 1 if len(batched) == args.k else args.n
    print(f"selected {len(batched)}; the selection scans {scanned} candidates")

    prefix = min(args.n, args.naive_prefix)
    naive, t_naive = timed(lambda: select_diverse_naive(candidates[:prefix], args.k, args.threshold))
    naive_scanned = naive[-1] + 1 if len(naive) == args.k else prefix
    extrapolated = naive_scanned < scanned
    if extrapolated and t_naive * scanned / naive_scanned < args.naive_budget:
        naive, t_naive = timed(lambda: select_diverse_naive(candidates, args.k, args.threshold))
        extrapolated = False
    if extrapolated:
        t_naive_prefix = t_naive
        t_naive = t_naive_prefix * scanned / naive_scanned
        same_naive = naive == [i for i in batched if i < prefix]
        naive_note = f"EXTRAPOLATED from the first {naive_scanned} candidates ({t_naive_prefix:.2f} s) x {scanned}/{naive_scanned}"
    else:
        same_naive = naive == batched
        naive_note = "full run"

    same_faiss = per_candidate == batched
    print(f"naive per-pair loop     : {t_naive:9.3f} s   ({naive_note})")
    print(f"FAISS search/candidate  : {t_faiss:9.3f} s   ({spread(faiss_times)})")
    print(f"batched (block {args.block_size:>5})  : {t_batched:9.3f} s   ({spread(batched_times)})")
    print(f"batched vs naive        : {t_naive / t_batched:9.1f}x faster")
    print(f"batched vs per-candidate: {t_faiss / t_batched:9.1f}x faster")
    print(f"per-candidate vs naive  : {t_naive / t_faiss:9.1f}x faster")
    print(
        f"identical selections: batched == per-candidate {same_faiss}; "
        f"batched == naive {same_naive}{' (on the prefix)' if extrapolated else ''}"
    )
    return 0 if same_faiss and same_naive else 1


if __name__ == "__main__":
    raise SystemExit(main())
