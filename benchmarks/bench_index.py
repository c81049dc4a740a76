"""Benchmark where FAISS earns its keep: the approximate near-duplicate index and the leakage guard.

Usage::

    PYTHONPATH=include python benchmarks/bench_index.py [--n 1000000] [--bases 100000] [--history 100000]

1. Selection at scale: ``--n`` 384-d rows, noisy copies (cosine about 0.98 to their base) of ``--bases``
   random base vectors, deduplicated at cosine ``--threshold`` with no target (``k = n``), so every candidate
   is compared with a kept set that grows to about ``--bases`` rows: the case a pool of millions with a large
   target is. The exact numpy path (``select_diverse``, the baseline) against the IVF path
   (``select_diverse_approx`` at the shipped ``ann_nlist`` / ``ann_nprobe``). The exact path runs in full when
   its run on the first ``--exact-prefix`` candidates predicts under ``--exact-budget`` seconds; otherwise it
   runs on that prefix and its time is extrapolated (per-candidate cost grows with the kept set, so a linear
   extrapolation from a prefix *underestimates* it and the ratio is a lower bound), and the output says so.
   Recall: the share of the exact path's near-duplicate rejections the IVF path also made, on the candidates
   both examined, and the IVF path's own sampled estimate.
2. The leakage guard: a new version of ``--new`` examples against ``--history`` published examples (80 %
   train, 20 % test) whose vectors are in the embedding cache, as in curation. Baseline: the same
   ``curate_frame`` call without history. The history's DVC reads are not included (see the README).

Both parts run BLAS and FAISS on one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_selection import make_candidates

from ftops.core.config import CurationConfig, load_config
from ftops.curation.curate import curate_frame
from ftops.curation.embedding import EmbeddingCache, text_sha256
from ftops.curation.selection import select_diverse, select_diverse_approx


class RandomEmbedder:
    """Each text's vector seeded by its hash: unrelated texts are near-orthogonal, as unrelated prompts are."""

    name = "bench-random"
    dim = 384

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = [np.random.default_rng(int(text_sha256(t)[:12], 16)).standard_normal(self.dim) for t in texts]
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def bench_selection(args: argparse.Namespace, cfg: CurationConfig) -> None:
    rows = make_candidates(args.n, 384, args.bases, 0, 0.2, args.seed)
    print(f"-- selection: {args.n} candidates, {args.bases} bases, threshold {args.threshold}, no target")
    start = time.perf_counter()
    approx, recall = select_diverse_approx(rows, args.n, args.threshold, nlist=cfg.ann_nlist, nprobe=cfg.ann_nprobe)
    t_approx = time.perf_counter() - start
    prefix = min(args.n, args.exact_prefix)
    start = time.perf_counter()
    exact = select_diverse(rows[:prefix], prefix, args.threshold)
    t_exact, note = time.perf_counter() - start, "full run"
    if prefix < args.n and t_exact * args.n / prefix < args.exact_budget:
        start = time.perf_counter()
        exact = select_diverse(rows, args.n, args.threshold)
        t_exact, prefix = time.perf_counter() - start, args.n
    elif prefix < args.n:
        # the exact path's work per candidate is about the kept set's size: weigh by it (IVF's kept set grows
        # as the exact one does, to within its recall)
        kept_before = np.searchsorted(np.asarray(approx), np.arange(args.n))
        weight = float(kept_before.sum()) / float(kept_before[:prefix].sum())
        note = (
            f"EXTRAPOLATED from the first {prefix} ({t_exact:.1f} s): x {args.n}/{prefix} = "
            f"{t_exact * args.n / prefix:.1f} s is a lower bound; by the kept set's growth x {weight:.2f}"
        )
        t_exact *= weight
    exact_set, approx_set = set(exact), {i for i in approx if i < prefix}
    rejected_exact = prefix - len(exact_set)
    caught = rejected_exact - len(approx_set - exact_set)
    print(f"exact numpy blocks : {t_exact:8.1f} s  ({note}); kept {len(exact)} of {prefix}")
    print(f"IVF (nlist {cfg.ann_nlist}, nprobe {cfg.ann_nprobe}): {t_approx:8.1f} s; kept {len(approx)} of {args.n}")
    print(f"IVF vs exact       : {t_exact / t_approx:8.1f}x faster")
    print(f"recall of near-duplicate rejections on the first {prefix}: {caught / max(1, rejected_exact):.4f} "
          f"({caught} of {rejected_exact}); extra kept by IVF {len(approx_set - exact_set)}, "
          f"missing {len(exact_set - approx_set)}; IVF's own sampled estimate {recall}")  # fmt: skip


def bench_leakage(args: argparse.Namespace, cfg: CurationConfig) -> None:
    embedder = RandomEmbedder()
    history = [f"published prompt {i}: {'train' if i % 5 else 'test'} example about topic {i * 7919}"
               for i in range(args.history)]  # fmt: skip
    published = [(p, "test" if i % 5 == 0 else "train") for i, p in enumerate(history)]
    new = [{"id": f"n{i}", "task_type": "qa", "prompt": f"new question {i} on subject {i * 104729}",
            "response": "A sufficiently long answer to pass the response length filter of curation.",
            "user_feedback": 5, "success": True, "latency_ms": 300, "confidence": 0.9,
            "timestamp": pd.Timestamp("2026-11-01", tz="UTC"), "user_id": f"u{i % 200}", "model_version": "base",
            "tokens_used": 40, "metadata": None} for i in range(args.new)]  # fmt: skip
    # a few paraphrases: new prompts equal (cosine 1) to a published one of the other split
    for j in range(5):
        new[j]["prompt"] = history[5 * j]  # a published *test* prompt whose hash sends it to train, or not
    frame = pd.DataFrame(new)
    curation = cfg.model_copy(update={"target_size": args.new, "max_user_share": 1.0})
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(Path(folder) / "cache.sqlite")
        start = time.perf_counter()
        cache.put_many(embedder.name, dict(zip(map(text_sha256, history), embedder.embed(history), strict=True)))
        print(f"-- leakage guard: history {args.history} published examples cached in "
              f"{time.perf_counter() - start:.1f} s; a new version of {args.new}")  # fmt: skip
        curate_frame(frame, curation, embedder, cache)  # warm: the new prompts' vectors cached for both runs
        times: dict[str, list[float]] = {"without": [], "with": []}
        report: dict[str, object] = {}
        for _ in range(args.repeat):
            for mode in times:
                start = time.perf_counter()
                result = curate_frame(frame, curation, embedder, cache, published=published if mode == "with" else ())
                times[mode].append(time.perf_counter() - start)
                report = result.leakage or report
                phases = result.timings
    t_without, t_with = (float(np.median(times[m])) for m in ("without", "with"))
    print(f"curate_frame without history : {t_without:7.2f} s (median of {args.repeat})")
    print(f"curate_frame with the guard  : {t_with:7.2f} s; guard phase {phases.get('leakage_guard')} s")
    print(f"guard cost per new version   : {t_with - t_without:7.2f} s ({t_with / t_without:.2f}x the baseline)")
    print(f"guard report: {report}")
    from ftops.curation.embedding import embed_with_cache
    from ftops.curation.leakage import guard_splits

    with tempfile.TemporaryDirectory() as folder:  # where the guard's time goes
        cache = EmbeddingCache(Path(folder) / "cache.sqlite")
        cache.put_many(embedder.name, dict(zip(map(text_sha256, history), embedder.embed(history), strict=True)))
        start = time.perf_counter()
        vectors = embed_with_cache(embedder, history, cache)[0]
        t_lookup = time.perf_counter() - start
        train, test = vectors[[s == "train" for _, s in published]], vectors[[s == "test" for _, s in published]]
        new_vectors, splits = embedder.embed([r["prompt"] for r in new]), ["train"] * len(new)
        start = time.perf_counter()
        guard_splits(new_vectors, splits, train, test, cfg.leakage_threshold)
        t_faiss = time.perf_counter() - start
    print(f"  of which: history vectors from the cache {t_lookup:.2f} s; FAISS indexes + searches {t_faiss:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="selection candidates")
    parser.add_argument("--bases", type=int, default=100_000, help="distinct prompts the candidates copy")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--exact-prefix", type=int, default=200_000, help="candidates of the exact path's first run")
    parser.add_argument("--exact-budget", type=float, default=300.0, help="seconds allowed for the full exact run")
    parser.add_argument("--history", type=int, default=100_000, help="published examples (leakage guard)")
    parser.add_argument("--new", type=int, default=500, help="examples of the new version (leakage guard)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the leakage guard, each way")
    parser.add_argument("--skip-selection", action="store_true")
    parser.add_argument("--skip-leakage", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    cfg = load_config().curation
    with threadpool_limits(limits=1):
        if not args.skip_selection:
            bench_selection(args, cfg)
        if not args.skip_leakage:
            bench_leakage(args, cfg)


if __name__ == "__main__":
    main()
