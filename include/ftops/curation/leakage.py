"""The leakage guard across dataset versions: no evaluation of any version is contaminated by another.

Within one version the split is a stable hash of the prompt and the diversity selection keeps no two prompts
within ``diversity_threshold`` of each other, so train and test share no near duplicate. Across versions
nothing stopped it: a paraphrase of an earlier version's *training* prompt could arrive as a *test* example
of the next version (whose model was trained, through its ancestors' data, on the original), or the reverse.

The guard holds every example ever published for a task type, with its split, in two FAISS indexes (one per
split; :mod:`ftops.curation.vector_index`) and searches each new example (k=1) in the *other* split's index:

* a new test example at cosine ``threshold`` or more to an earlier training example moves to train, unless
  it is also that close to an earlier test example (then it is dropped);
* a new training example that close to an earlier test example moves to test, unless it is also that close
  to an earlier training example (then it is dropped).

An example already published in the same split is found in its own split's index, never the other's (the
hash split sends one prompt to one split), so republishing never trips the guard. A moved prompt lands in
history in its new split and is moved the same way by every later run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class LeakageReport:
    """What the guard did to one new version (recorded in its metadata)."""

    threshold: float
    history_train: int = 0  # distinct earlier training prompts searched
    history_test: int = 0
    moved_to_train: int = 0
    moved_to_test: int = 0
    dropped: int = 0
    approximate: bool = False  # whether the history indexes were IVF (history above ann_min_pool)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def guard_splits(
    vectors: np.ndarray,
    splits: Sequence[str],
    history_train: np.ndarray,
    history_test: np.ndarray,
    threshold: float,
    *,
    approximate: bool = False,
    nlist: int = 1024,
    nprobe: int = 16,
) -> tuple[list[str | None], LeakageReport]:
    """Move or drop new examples that lie within ``threshold`` of an earlier version's other split.

    Args:
        vectors: L2-normalised prompt embeddings of the new examples.
        splits: Their splits as assigned (``"train"`` or ``"test"``).
        history_train: Embeddings of every earlier version's training prompts.
        history_test: Embeddings of every earlier version's test prompts.
        threshold: Cosine at or above which two prompts count as the same question.
        approximate: Search IVF indexes instead of exact ones (for histories of millions).
        nlist: IVF buckets, when ``approximate``.
        nprobe: IVF buckets searched per query, when ``approximate``.

    Returns:
        Each new example's split after the guard (None: dropped), and the report.
    """
    from ftops.curation.vector_index import build_index, nearest

    report = LeakageReport(threshold=threshold, history_train=len(history_train), history_test=len(history_test),
                           approximate=approximate)  # fmt: skip
    final: list[str | None] = list(splits)
    if len(vectors) == 0 or (len(history_train) == 0 and len(history_test) == 0):
        return final, report
    near: dict[str, np.ndarray] = {}
    for split, history in (("train", history_train), ("test", history_test)):
        index = build_index(history, approximate=approximate, nlist=nlist, nprobe=nprobe)
        near[split] = nearest(index, vectors)[0] >= threshold
    for i, split in enumerate(splits):
        other = "train" if split == "test" else "test"
        if not near[other][i]:
            continue
        if near[split][i]:
            final[i] = None
            report.dropped += 1
        else:
            final[i] = other
            if other == "train":
                report.moved_to_train += 1
            else:
                report.moved_to_test += 1
    if report.dropped or report.moved_to_train or report.moved_to_test:
        log.warning("Leakage guard (cosine >= %.2f against %d earlier train and %d test prompts): %d test -> train, "
                    "%d train -> test, %d dropped", threshold, report.history_train, report.history_test,
                    report.moved_to_train, report.moved_to_test, report.dropped)  # fmt: skip
    return final, report


def near_evalset(vectors: np.ndarray, evalset: np.ndarray, threshold: float) -> np.ndarray:
    """Which examples ask an eval-set question: cosine ``threshold`` or more to an eval-set prompt.

    The eval set is the yardstick, so its questions (and their rewordings) must never be trained on. Measured
    on the simulator with all-MiniLM-L6-v2 (``benchmarks/measure_evalset_overlap.py``): at 0.95 every case,
    spacing and punctuation variant of an eval prompt and half to four fifths of those with other small talk
    are caught, while 0-10 % of prompts that ask *other* questions (same template, another number or review)
    are caught too; at the cross-version guard's 0.9, 47 % of other unit-conversion questions would be.

    Args:
        vectors: L2-normalised embeddings of the examples.
        evalset: L2-normalised embeddings of the eval-set prompts.
        threshold: ``curation.evalset_threshold``.
    """
    from ftops.curation.vector_index import build_index, nearest

    if len(vectors) == 0 or len(evalset) == 0:
        return np.zeros(len(vectors), dtype=bool)
    scores, _ = nearest(build_index(evalset, approximate=False), vectors)
    return np.asarray(scores >= threshold)
