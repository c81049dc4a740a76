"""Curation end to end: the embedding cache on a re-run, and rows per second on a warm cache.

Two measurements on the embedded defaults (SQLite warehouse, git + DVC registry) in a throw-away folder:

1. **Re-run with 1 % new rows**: curate ``--rows`` simulated rows (cold cache), add 1 % new rows, curate again
   (the next night: only the new window is read). Prints how many prompts each run embedded, as a share of
   all the rows in the log. Target (issue 3): the re-run embeds at most 2 % of the rows.
2. **Warm cache at scale**: curate ``--big-rows`` rows once to fill the cache, then re-read all of them on
   purpose (``since`` = the start) with the cache warm. Prints rows per second and the time per phase.

The real all-MiniLM-L6-v2 model embeds by default; ``--fast-embedder`` fills the cache with a hash-based
stand-in for part 2 (hours of CPU otherwise on 2 cores), which changes which prompts count as near
duplicates but not the work a warm run does: say which one you used when you record results.

Run: ``. scripts/env.sh && python benchmarks/bench_curation.py --rows 5000 --big-rows 100000``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

TASK = "city_extraction"


class HashEmbedder:
    """Deterministic unit vectors from a hash of the text: a stand-in that costs nothing to run (under any
    name: bench_nightly.py fills the cache of the configured model's name with it)."""

    dim = 384

    def __init__(self, name: str = "hash-bench") -> None:
        self.name = name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


class CountingEmbedder:
    """Wraps an embedder and counts the texts it was asked to embed; ``name`` given, the inner model is not
    loaded for its name, and its length is asked only when needed."""

    def __init__(self, inner: Any, name: str | None = None) -> None:
        self.inner, self.name, self.count = inner, name or inner.name, 0

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.count += len(texts)
        return np.asarray(self.inner.embed(texts))


def _setup(folder: Path):
    from ftops.core.config import FtopsConfig, StorageConfig
    from ftops.warehouse.schema import ensure_schema

    engine = sa.create_engine(f"sqlite:///{folder / 'warehouse.db'}")
    ensure_schema(engine)
    cfg = FtopsConfig(storage=StorageConfig(dataset_repo=str(folder / "datasets"), dvc_remote=str(folder / "remote"),
                                            embedding_cache=str(folder / "emb.db")))  # fmt: skip
    return engine, cfg


def _curate(engine, cfg, run_key: str, now: datetime, embedder, **kwargs) -> tuple[dict, float]:  # noqa: ANN001
    from ftops.pipeline.curate import curate_task_type

    started = time.perf_counter()
    result = curate_task_type(engine, cfg, TASK, run_key=run_key, now=now, embedder=embedder, **kwargs)
    return result, time.perf_counter() - started


def rerun_share(rows: int, embedder) -> None:  # noqa: ANN001
    from ftops_dev.simulate import generate_interactions

    from ftops.warehouse.schema import insert_interactions

    with tempfile.TemporaryDirectory() as tmp:
        engine, cfg = _setup(Path(tmp))
        night1 = datetime(2026, 11, 1, tzinfo=UTC)
        insert_interactions(engine, generate_interactions(rows, seed=1, task_types=[TASK], start=night1))
        counting = CountingEmbedder(embedder)
        first, first_s = _curate(engine, cfg, "night-1", night1, counting)
        cold = counting.count
        new = max(1, rows // 100)
        insert_interactions(engine, generate_interactions(new, seed=2, task_types=[TASK], start=night1 + timedelta(days=1), days=1))
        counting.count = 0
        second, second_s = _curate(engine, cfg, "night-2", night1 + timedelta(days=1), counting)
        total = rows + new
        print(f"\n## Re-run with 1 % new rows ({embedder.name})")
        print("| run | rows in log | rows read | embedded | embedded / rows in log | seconds | status |")
        print("|---|---|---|---|---|---|---|")
        print(f"| first (cold cache) | {rows} | {first['rows_read']} | {cold} | {cold / rows:.1%} | {first_s:.1f} | {first['status']} |")
        print(f"| next night (+{new} rows) | {total} | {second['rows_read']} | {counting.count} | "
              f"{counting.count / total:.2%} | {second_s:.1f} | {second['status']} |")  # fmt: skip
        print(f"re-run embedded {counting.count / total:.2%} of the rows (target ≤ 2 %); "
              f"it took {second_s / first_s:.2f}× the first run's time")  # fmt: skip


def warm_at_scale(rows: int, embedder) -> None:  # noqa: ANN001
    from ftops_dev.simulate import generate_interactions

    from ftops.warehouse.schema import insert_interactions

    with tempfile.TemporaryDirectory() as tmp:
        engine, cfg = _setup(Path(tmp))
        start = datetime(2026, 11, 1, tzinfo=UTC)
        insert_interactions(engine, generate_interactions(rows, seed=3, task_types=[TASK], start=start))
        counting = CountingEmbedder(embedder)
        _, fill_s = _curate(engine, cfg, "fill", start, counting)
        filled = counting.count
        counting.count = 0
        warm, warm_s = _curate(engine, cfg, "warm", start + timedelta(days=1), counting, since=start - timedelta(days=60))
        print(f"\n## {rows} rows, warm cache ({embedder.name})")
        print(f"cache fill run: {fill_s:.1f} s, embedded {filled}; warm run: {warm_s:.1f} s, embedded {counting.count}, "
              f"{warm['rows_read'] / warm_s:,.0f} rows/s, status {warm['status']}")  # fmt: skip
        print("| phase | seconds | share |\n|---|---|---|")
        for phase, seconds in warm["timings_s"].items():
            print(f"| {phase} | {seconds:.2f} | {seconds / warm_s:.0%} |")
        print(f"pool {warm['pool_size']}, accepted {warm['accepted']}, accounting {warm['accounting']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="rows of the re-run measurement")
    parser.add_argument("--big-rows", type=int, default=100_000, help="rows of the warm-cache measurement (0 = skip)")
    parser.add_argument("--fast-embedder", action="store_true", help="hash stand-in for the warm-cache measurement")
    args = parser.parse_args()
    os.environ.setdefault("FTOPS_HOME", tempfile.mkdtemp(prefix="ftops-bench-"))  # Data Docs land here
    from ftops.curation.embedding import SentenceEmbedder

    real = SentenceEmbedder()
    print(f"# bench_curation: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}")
    rerun_share(args.rows, real)
    if args.big_rows:
        warm_at_scale(args.big_rows, HashEmbedder() if args.fast_embedder else real)


if __name__ == "__main__":
    main()
