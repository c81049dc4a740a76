"""Greedy diversity selection over prompt embeddings.

The rule (the original design's): walk the candidates in the order given (the caller sorts them by quality,
best first) and keep a candidate when its cosine similarity with every example kept so far is below
``threshold``; stop once ``k`` are kept. Rows are expected to be L2-normalised, so cosine similarity is the
inner product of two rows.

Three implementations of the one rule are provided:

* :func:`select_diverse` — the production path. Candidates are taken a block at a time and compared with the
  kept set by one matrix product; a block-internal similarity matrix then resolves the few survivors of a
  block against one another in order. At high thresholds the product runs over the first quarter or so of
  the dimensions plus one column bounding the rest (Cauchy-Schwarz), which rules out every pair but a
  candidate's near duplicates; only those pairs get a full dot product. See :func:`_near_kept`.
* :func:`select_diverse_naive` — the original per-candidate Python loop, one dot product per (candidate,
  kept) pair. The reference for tests and the baseline for benchmarks.
* :func:`select_diverse_faiss_per_candidate` — one FAISS ``IndexFlatIP`` search per candidate: the
  intermediate baseline for benchmarks.

All three return exactly the same indices. For pools of millions with a large target, where every candidate
would meet a kept set of hundreds of thousands, :func:`select_diverse_approx` searches the kept set through an
approximate (IVF) index instead and measures its recall against the exact rule; curation switches to it when the pool
and the target both exceed ``ann_min_pool``. (An *exact* FAISS index searched per block loses to the numpy blocks: 0.49 s
against 0.08 s at 50 000 candidates, 4.2 s against 0.52 s at 200 000.) Float32 dot products computed by different kernels (a BLAS
matrix product, a FAISS SIMD kernel, ``numpy.dot``) can differ in their last bits, which could flip a
decision for a pair whose similarity lies within rounding error of ``threshold``. So every implementation
decides the rule on the *exact* inner product of the float32 rows: a computed similarity farther from the
threshold than the float32 rounding-error bound decides at once, and the rare pair inside that band is
recomputed exactly (:func:`math.fsum` over float64 products, which are exact for float32 inputs).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from numpy.typing import NDArray


logger = logging.getLogger(__name__)
_F32_UNIT_ROUNDOFF: float = 2.0**-24

# Pairs per candidate left by the cheap pass above which the full product is cheaper than one gathered dot
# product per pair (measured on 384-d rows: about 0.5 us a pair against 4-10 us a row for the full product).
_MAX_PAIRS_PER_ROW: int = 4

# The products here are small (a block of 1024 rows against a few hundred kept rows): a second BLAS thread
# saves little on an idle machine and costs a lot on a busy one (measured on the 2-core development machine
# at load 5: 2.8 s with two threads, 0.9 s with one; see benchmarks/README.md).
_BLAS_THREADS: int = 1
_RECALL_SAMPLE: int = 1000  # candidates checked exactly for the approximate path's recall (about 1 s at 100 000 kept)


def as_matrix(embeddings: np.ndarray) -> NDArray[np.float32]:
    """Return ``embeddings`` as a C-contiguous float32 matrix (the form every implementation decides on)."""
    matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, dim), got shape {matrix.shape}")
    return matrix


def check_args(k: int, threshold: float, block_size: int = 1) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")


def rounding_margin(matrix: NDArray[np.float32]) -> float:
    """Bound on |computed - exact| for a float32 inner product of two rows of ``matrix``.

    The classic bound for a float32 dot product of length ``d`` in any summation order is
    ``gamma_d * sum(|x_i * y_i|) <= gamma_d * |x| * |y|`` with ``gamma_d = d*u / (1 - d*u)``; a factor of
    two covers fused multiply-adds and the float32 sum of squares the norm is taken from (itself within
    ``gamma_d`` of exact). For normalised 384-d rows it is about 5e-5.
    """
    if matrix.size == 0:
        return 0.0
    dim: int = matrix.shape[1]
    gamma = dim * _F32_UNIT_ROUNDOFF / (1.0 - dim * _F32_UNIT_ROUNDOFF)
    max_norm = float(np.sqrt(np.max(np.einsum("ij,ij->i", matrix, matrix))))
    return 2.0 * gamma * max_norm * max_norm + 1e-12


def exact_similarity(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Correctly rounded inner product of two float32 vectors (independent of summation order)."""
    return math.fsum((a.astype(np.float64) * b.astype(np.float64)).tolist())


def any_similar(
    approx: NDArray[np.float32],
    rows: NDArray[np.float32],
    candidate: NDArray[np.float32],
    threshold: float,
    margin: float,
) -> bool:
    """Whether ``candidate`` is at or above ``threshold`` with any of ``rows``.

    Args:
        approx: Computed similarities of ``candidate`` with each of ``rows`` (any float32 kernel).
        rows: The rows compared against.
        candidate: The candidate vector.
        threshold: Similarity at or above which the candidate is a near duplicate.
        margin: Rounding-error bound of ``approx`` (see :func:`rounding_margin`).

    Returns:
        The rule's decision on exact inner products.
    """
    if approx.size == 0:
        return False
    if bool(np.any(approx >= threshold + margin)):
        return True
    border = np.flatnonzero(approx >= threshold - margin)
    return any(exact_similarity(rows[j], candidate) >= threshold for j in border)


def _head_dims(dim: int, threshold: float) -> int:
    """Dimensions of the cheap first pass of :func:`_near_kept`, or ``dim`` when that pass would not pay.

    For rows whose energy is spread over all dimensions, a row's norm outside the first ``head`` is about
    ``sqrt(1 - head / dim)``, so the tail bound is about ``1 - head / dim``. The pass rules out nearly every
    unrelated pair when that bound sits 0.15 below ``threshold``: for 384-d rows at 0.9 that takes 96
    dimensions, and an unrelated pair would need a partial similarity six standard deviations high to pass.
    Beyond half the dimensions the pass saves too little.
    """
    head = max(32, math.ceil(dim * (1.15 - threshold) / 32) * 32)
    return head if head <= dim // 2 else dim


def _with_tail_bound(rows: NDArray[np.float32], head: int) -> NDArray[np.float32]:
    """The first ``head`` columns of ``rows`` and one more: each row's norm over the other columns, rounded up.

    The exact inner product of two such rows bounds that of the full rows from above (Cauchy-Schwarz on the
    columns left out), and a float32 product of them is off by no more than one of the full rows would be, so
    a computed bound below ``threshold - margin`` proves the pair is below ``threshold``. (The float64 tail
    norms are off by about 1e-14 relative, far inside the factor of two in :func:`rounding_margin`.)
    """
    bounded = np.empty((rows.shape[0], head + 1), dtype=np.float32)
    bounded[:, :head] = rows[:, :head]
    tail = np.sqrt(np.einsum("ij,ij->i", rows[:, head:], rows[:, head:], dtype=np.float64))
    bounded[:, head] = np.nextafter(tail.astype(np.float32), np.float32(np.inf))
    return bounded


def _near_kept(
    block: NDArray[np.float32],
    kept_rows: NDArray[np.float32],
    kept_bounded: NDArray[np.float32] | None,
    threshold: float,
    margin: float,
) -> NDArray[np.bool_]:
    """Which rows of ``block`` have an exact similarity at or above ``threshold`` with some row of ``kept_rows``.

    With ``kept_bounded`` (see :func:`_with_tail_bound`), a cheap matrix product over a few dimensions plus the
    tail bound comes first: a pair whose bound is below ``threshold - margin`` cannot reach ``threshold``.
    Near the usual thresholds that rules out all but about one pair per candidate (its near duplicate),
    and only those pairs get a full dot product. When many pairs are left (rows whose energy sits in the
    dimensions left out, low thresholds), or without ``kept_bounded``, the full matrix product is used.

    Args:
        block: Candidate rows.
        kept_rows: Rows kept so far (at least one).
        kept_bounded: ``_with_tail_bound(kept_rows, head)``, or None to skip the cheap pass.
        threshold: Similarity at or above which a candidate is a near duplicate.
        margin: Rounding-error bound of a float32 inner product (see :func:`rounding_margin`).

    Returns:
        Boolean mask over the rows of ``block``.
    """
    lower = threshold - margin
    upper = threshold + margin
    pairs: NDArray[np.intp] | None = None
    if kept_bounded is not None:
        bounds = _with_tail_bound(block, kept_bounded.shape[1] - 1) @ kept_bounded.T
        pairs = np.flatnonzero(bounds >= lower)
        if pairs.size > _MAX_PAIRS_PER_ROW * block.shape[0]:
            pairs = None
    if pairs is not None:
        rows, cols = np.divmod(pairs, kept_rows.shape[0])
        approx = np.einsum("ij,ij->i", block[rows], kept_rows[cols])
    else:
        similarities = block @ kept_rows.T
        rows, cols = np.divmod(np.flatnonzero(similarities >= lower), kept_rows.shape[0])
        approx = similarities[rows, cols]
    near = np.zeros(block.shape[0], dtype=bool)
    near[rows[approx >= upper]] = True
    in_band = (approx >= lower) & (approx < upper)
    for row, col in zip(rows[in_band].tolist(), cols[in_band].tolist(), strict=True):
        if not near[row] and exact_similarity(block[row], kept_rows[col]) >= threshold:
            near[row] = True
    return near


def select_diverse(embeddings: np.ndarray, k: int, threshold: float, block_size: int = 1024) -> list[int]:
    """Select up to ``k`` mutually dissimilar rows, greedily in the given order, a block at a time.

    A candidate is kept when its cosine similarity with every already-kept row is below ``threshold``.
    Candidates are processed ``block_size`` at a time: a matrix product of the block against the kept set
    (over a few dimensions plus a bound on the rest first, see :func:`_near_kept`) removes candidates similar
    to an earlier kept row, then the block's internal similarity matrix resolves the few survivors in order (a
    kept candidate removes the later ones of its block that are similar to it). The result is identical to
    :func:`select_diverse_naive`. BLAS runs on one thread meanwhile (see ``_BLAS_THREADS``).

    Args:
        embeddings: ``(n, dim)`` array of L2-normalised rows, best candidate first.
        k: Most rows to keep.
        threshold: Cosine similarity at or above which a candidate counts as a near duplicate.
        block_size: Candidates compared per matrix product.

    Returns:
        Indices of the kept rows, in the order they were kept (ascending).

    Raises:
        ValueError: If ``embeddings`` is not 2-D, ``k`` is negative, ``block_size`` is below 1 or
            ``threshold`` is NaN.
    """
    check_args(k, threshold, block_size)
    matrix = as_matrix(embeddings)
    if k == 0 or matrix.shape[0] == 0:
        return []
    with threadpool_limits(limits=_BLAS_THREADS, user_api="blas"):
        kept, scanned = _select_in_blocks(matrix, k, threshold, block_size)
    logger.info(
        "Diversity selection kept %d of %d candidates scanned (%d given, k=%d)", len(kept), scanned, len(matrix), k
    )
    return kept


def _select_in_blocks(matrix: NDArray[np.float32], k: int, threshold: float, block_size: int) -> tuple[list[int], int]:
    """The loop of :func:`select_diverse`; returns the kept indices and how many candidates were scanned."""
    n, dim = matrix.shape
    margin = rounding_margin(matrix)
    head = _head_dims(dim, threshold)
    kept: list[int] = []
    kept_rows = np.empty((min(k, n), dim), dtype=np.float32)
    kept_bounded = np.empty((min(k, n), head + 1), dtype=np.float32) if head < dim else None
    scanned = 0
    for start in range(0, n, block_size):
        block = matrix[start : start + block_size]
        scanned = start + block.shape[0]
        if kept:
            bounded = None if kept_bounded is None else kept_bounded[: len(kept)]
            survivors = np.flatnonzero(~_near_kept(block, kept_rows[: len(kept)], bounded, threshold, margin))
        else:
            survivors = np.arange(block.shape[0])
        if survivors.size == 0:
            continue
        candidates = block[survivors]
        candidates_bounded = None if kept_bounded is None else _with_tail_bound(candidates, head)
        within = candidates @ candidates.T
        rejected = np.zeros(survivors.size, dtype=bool)
        for pos in range(survivors.size):
            if rejected[pos]:
                continue
            kept_rows[len(kept)] = candidates[pos]
            if kept_bounded is not None and candidates_bounded is not None:
                kept_bounded[len(kept)] = candidates_bounded[pos]
            kept.append(start + int(survivors[pos]))
            if len(kept) == k:
                return kept, scanned
            _reject_later(candidates, within, rejected, pos, threshold, margin)
    return kept, scanned


def _reject_later(candidates: np.ndarray, within: np.ndarray, rejected: np.ndarray, pos: int, threshold: float,
                  margin: float) -> None:  # fmt: skip
    """Mark the block's later candidates that are near duplicates of the one just kept at ``pos``.

    Clearly similar ones go by the block's float32 similarities; those within the rounding ``margin`` of the
    threshold are decided by :func:`exact_similarity`.
    """
    later = within[pos, pos + 1 :]
    rejected[pos + 1 :] |= later >= threshold + margin
    for offset in np.flatnonzero((later >= threshold - margin) & (later < threshold + margin)):
        other = pos + 1 + int(offset)
        if not rejected[other] and exact_similarity(candidates[pos], candidates[other]) >= threshold:
            rejected[other] = True


def select_diverse_approx(
    embeddings: np.ndarray, k: int, threshold: float, *, nlist: int, nprobe: int, block_size: int = 1024
) -> tuple[list[int], float | None]:
    """:func:`select_diverse` for pools of millions: the kept set is searched through an approximate index.

    The same greedy rule, block by block, but a block is compared with the kept set by one k=1 search of an
    IVF index (:func:`ftops.curation.vector_index.approximate_index`, trained on a sample of the candidates)
    instead of a matrix product, so a candidate costs about ``nprobe / nlist`` of the kept set instead of all
    of it; the block's survivors are resolved against one another exactly, and the kept ones added to the
    index. The index can miss a near duplicate (the candidate is then kept), never invent one. Its recall
    against the exact rule is measured on a sample of the scanned candidates: of those with an exact
    near duplicate among the rows kept before them, the share that was left out.

    Returns:
        The kept indices (ascending) and the measured recall (None when the sample held no near duplicate).
    """
    from ftops.curation.vector_index import approximate_index

    check_args(k, threshold, block_size)
    matrix = as_matrix(embeddings)
    if k == 0 or matrix.shape[0] == 0:
        return [], None
    index = approximate_index(matrix, nlist=nlist, nprobe=nprobe)
    margin = rounding_margin(matrix)
    kept: list[int] = []
    scanned = 0
    with threadpool_limits(limits=_BLAS_THREADS):
        for start in range(0, matrix.shape[0], block_size):
            block = matrix[start : start + block_size]
            scanned = start + block.shape[0]
            scores = index.search(block, 1)[0][:, 0] if kept else np.full(block.shape[0], -np.inf)
            survivors = np.flatnonzero(scores < threshold)
            candidates = block[survivors]
            within = candidates @ candidates.T
            rejected = np.zeros(survivors.size, dtype=bool)
            before = len(kept)
            for pos in range(survivors.size):
                if rejected[pos]:
                    continue
                kept.append(start + int(survivors[pos]))
                if len(kept) == k:
                    break
                _reject_later(candidates, within, rejected, pos, threshold, margin)
            index.add(matrix[kept[before:]])
            if len(kept) == k:
                break
        recall = _near_duplicate_recall(matrix, kept, scanned, threshold)
    logger.info("Approximate diversity selection (IVF, nlist=%d, nprobe=%d) kept %d of %d scanned, recall %s",
                index.nlist, index.nprobe, len(kept), scanned, "n/a" if recall is None else f"{recall:.4f}")  # fmt: skip
    return kept, recall


def _near_duplicate_recall(
    matrix: NDArray[np.float32], kept: list[int], scanned: int, threshold: float, sample: int = _RECALL_SAMPLE
) -> float | None:
    """Of sampled scanned candidates with a row kept before them at ``threshold`` or more, the share left out."""
    if not kept:
        return None
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(scanned, min(sample, scanned), replace=False))
    kept_array = np.asarray(kept)
    is_kept = np.isin(queries, kept_array)
    kept_rows = matrix[kept_array]
    near = np.zeros(queries.size, dtype=bool)
    for start in range(0, queries.size, 128):  # 128 x a million kept rows: 0.5 GB of similarities at most
        part = queries[start : start + 128]
        similarities = matrix[part] @ kept_rows.T
        similarities[kept_array[None, :] >= part[:, None]] = -np.inf  # only rows kept before the candidate
        near[start : start + 128] = similarities.max(axis=1) >= threshold
    if not bool(near.any()):
        return None
    return float((~is_kept[near]).mean())


def diversity_score(embeddings: np.ndarray) -> float:
    """Diversity of a set of examples: 1 minus the mean pairwise cosine similarity of its rows.

    The mean runs over the ``n * (n - 1) / 2`` distinct pairs (a row is never paired with itself); rows are
    normalised here, so the value is a true cosine whatever their norms. It is 0 for identical rows, about 1
    for unrelated (orthogonal or random high-dimensional) rows, and at most ``1 + 1/(n-1)``. Computed in
    ``O(n * dim)`` from the norm of the row sum: ``sum_{i<j} x_i.x_j = (|sum x_i|^2 - n) / 2`` for unit rows.

    Args:
        embeddings: ``(n, dim)`` array, typically the selected rows.

    Returns:
        The score; 0.0 when there are fewer than two rows (no pairs to be diverse).

    Raises:
        ValueError: If ``embeddings`` is not 2-D or holds an all-zero row.
    """
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, dim), got shape {matrix.shape}")
    n = matrix.shape[0]
    if n < 2:
        return 0.0
    norms = np.linalg.norm(matrix, axis=1)
    if bool(np.any(norms == 0)):
        raise ValueError("embeddings holds an all-zero row, which has no cosine similarity")
    unit = matrix / norms[:, None]
    total = unit.sum(axis=0)
    pair_sum = (float(total @ total) - n) / 2.0
    mean_cosine: float = pair_sum / (n * (n - 1) / 2.0)
    return 1.0 - mean_cosine
