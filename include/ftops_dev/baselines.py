"""Benchmark baselines for diversity selection: the design's per-candidate loop and one FAISS search per
candidate. Not used by the pipeline; ``benchmarks/bench_selection.py`` and the tests compare
:func:`ftops.curation.selection.select_diverse` with them (same output, measured speed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ftops.curation.selection import any_similar, as_matrix, check_args, exact_similarity, rounding_margin

if TYPE_CHECKING:
    pass


def select_diverse_naive(embeddings: np.ndarray, k: int, threshold: float) -> list[int]:
    """Select up to ``k`` rows with the original per-candidate loop: one dot product per (candidate, kept) pair.

    The reference implementation of the rule (see the module docstring); slow, for tests and benchmarks.

    Args:
        embeddings: ``(n, dim)`` array of L2-normalised rows, best candidate first.
        k: Most rows to keep.
        threshold: Cosine similarity at or above which a candidate counts as a near duplicate.

    Returns:
        Indices of the kept rows, in the order they were kept (ascending).

    Raises:
        ValueError: If ``embeddings`` is not 2-D, ``k`` is negative or ``threshold`` is NaN.
    """
    check_args(k, threshold)
    matrix = as_matrix(embeddings)
    if k == 0 or matrix.shape[0] == 0:
        return []
    margin = rounding_margin(matrix)
    upper = threshold + margin
    lower = threshold - margin
    kept: list[int] = []
    for index in range(matrix.shape[0]):
        candidate = matrix[index]
        is_duplicate = False
        for kept_index in kept:
            similarity = float(np.dot(matrix[kept_index], candidate))
            if similarity >= upper or (
                similarity >= lower and exact_similarity(matrix[kept_index], candidate) >= threshold
            ):
                is_duplicate = True
                break
        if not is_duplicate:
            kept.append(index)
            if len(kept) == k:
                break
    return kept


def select_diverse_faiss_per_candidate(embeddings: np.ndarray, k: int, threshold: float) -> list[int]:
    """Select up to ``k`` rows with one FAISS inner-product search per candidate (a benchmark baseline).

    Args:
        embeddings: ``(n, dim)`` array of L2-normalised rows, best candidate first.
        k: Most rows to keep.
        threshold: Cosine similarity at or above which a candidate counts as a near duplicate.

    Returns:
        Indices of the kept rows, in the order they were kept (ascending).

    Raises:
        ValueError: If ``embeddings`` is not 2-D, ``k`` is negative or ``threshold`` is NaN.
    """
    import faiss  # heavy: imported only when selecting

    check_args(k, threshold)
    matrix = as_matrix(embeddings)
    n, dim = matrix.shape
    if k == 0 or n == 0:
        return []
    margin = rounding_margin(matrix)
    index = faiss.IndexFlatIP(dim)
    kept: list[int] = []
    kept_rows = np.empty((min(k, n), dim), dtype=np.float32)
    for position in range(n):
        query = matrix[position : position + 1]
        if kept:
            scores, _ = index.search(query, 1)
            best = float(scores[0, 0])
            if best >= threshold + margin:
                continue
            if best >= threshold - margin:
                rows = kept_rows[: len(kept)]
                if any_similar(rows @ query[0], rows, query[0], threshold, margin):
                    continue
        index.add(query)
        kept_rows[len(kept)] = query[0]
        kept.append(position)
        if len(kept) == k:
            break
    return kept
