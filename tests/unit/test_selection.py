"""Unit tests for ftops.selection: the batched greedy selection must match the naive rule exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftops.selection import (
    diversity_score,
    select_diverse,
    select_diverse_faiss_per_candidate,
    select_diverse_naive,
)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def _planted(seed: int, n: int = 600, dim: int = 32, bases: int = 40, noise: float = 0.25) -> np.ndarray:
    """Random rows where most are noisy copies of a few bases (near duplicates at many similarity levels)."""
    rng = np.random.default_rng(seed)
    base = _normalise(rng.standard_normal((bases, dim)))
    rows = []
    for _ in range(n):
        if rng.random() < 0.15:
            rows.append(rng.standard_normal(dim))
        else:
            scale = noise * rng.random()  # a spread of similarities, many near the thresholds tested
            rows.append(base[rng.integers(bases)] + scale * rng.standard_normal(dim) / np.sqrt(dim))
    return _normalise(np.array(rows))


def _all_three(embeddings: np.ndarray, k: int, threshold: float, block_size: int = 1024) -> list[int]:
    naive = select_diverse_naive(embeddings, k, threshold)
    assert select_diverse(embeddings, k, threshold, block_size=block_size) == naive
    assert select_diverse_faiss_per_candidate(embeddings, k, threshold) == naive
    return naive


def _satisfies_rule(embeddings: np.ndarray, kept: list[int], threshold: float) -> bool:
    """Check the greedy rule from first principles in float64 (away from the rounding band)."""
    matrix = embeddings.astype(np.float64)
    kept_set = set(kept)
    for index in range(max(kept, default=-1) + 1):
        earlier = [j for j in kept if j < index]
        sims = matrix[earlier] @ matrix[index] if earlier else np.array([])
        similar = bool(np.any(sims >= threshold))
        if (index in kept_set) == similar:
            return False
    return True


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("block_size", [1, 7, 1024])
@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.97])
def test_batched_matches_naive_on_planted_duplicates(seed: int, block_size: int, threshold: float) -> None:
    embeddings = _planted(seed)
    kept = _all_three(embeddings, k=10_000, threshold=threshold, block_size=block_size)
    assert 0 < len(kept) < len(embeddings)  # some near duplicates were dropped
    assert _satisfies_rule(embeddings, kept, threshold)


@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_k_reached_stops_early(block_size: int) -> None:
    embeddings = _planted(5)
    everything = select_diverse_naive(embeddings, 10_000, 0.9)
    assert len(everything) > 12
    kept = _all_three(embeddings, k=12, threshold=0.9, block_size=block_size)
    assert kept == everything[:12]


def test_k_not_reached_returns_all_diverse() -> None:
    embeddings = _planted(6, n=200)
    kept = _all_three(embeddings, k=len(embeddings), threshold=0.9, block_size=7)
    assert len(kept) < len(embeddings)


def test_orthogonal_rows_all_kept_in_order() -> None:
    embeddings = np.eye(20, dtype=np.float32)
    assert _all_three(embeddings, k=20, threshold=0.5, block_size=7) == list(range(20))


def test_exact_duplicates_dropped() -> None:
    embeddings = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # rows 0-3 equal, 4-7 equal, 8-11 equal
    assert _all_three(embeddings, k=10, threshold=0.9, block_size=5) == [0, 4, 8]


def test_first_candidate_always_kept_and_threshold_extremes() -> None:
    embeddings = _planted(7, n=50)
    assert _all_three(embeddings, k=10, threshold=-1.5) == [0]  # every pair counts as a duplicate
    assert _all_three(embeddings, k=100, threshold=1.5) == list(range(50))  # no pair does


def test_threshold_at_exact_similarity_is_a_duplicate() -> None:
    """The rule is 'keep if similarity < threshold': a pair exactly at the threshold is a duplicate."""
    rng = np.random.default_rng(8)
    embeddings = _normalise(rng.standard_normal((2, 64)))
    exact = math.fsum((embeddings[0].astype(np.float64) * embeddings[1].astype(np.float64)).tolist())  # exact
    for block_size in (1, 7):
        assert _all_three(embeddings, k=2, threshold=exact, block_size=block_size) == [0]
        assert _all_three(embeddings, k=2, threshold=float(np.nextafter(exact, 2.0)), block_size=block_size) == [0, 1]


def test_pairs_within_rounding_band_agree() -> None:
    """Thresholds set to actual pair similarities put many decisions inside float32 rounding error."""
    embeddings = _planted(9, n=300, dim=384)
    sims = (embeddings[:60].astype(np.float64) @ embeddings[:60].T.astype(np.float64))[np.triu_indices(60, 1)]
    for threshold in sorted(sims)[-5:]:
        for block_size in (1, 7, 1024):
            _all_three(embeddings, k=1000, threshold=float(threshold), block_size=block_size)


def test_empty_and_zero_k() -> None:
    empty = np.zeros((0, 16), dtype=np.float32)
    assert _all_three(empty, k=5, threshold=0.9) == []
    assert _all_three(_planted(10, n=20), k=0, threshold=0.9) == []


def test_float64_input_accepted() -> None:
    embeddings = _planted(11, n=100).astype(np.float64)
    _all_three(embeddings, k=50, threshold=0.9, block_size=7)


@pytest.mark.parametrize(
    ("embeddings", "k", "threshold", "block_size"),
    [
        (np.zeros(5, dtype=np.float32), 1, 0.9, 8),
        (np.zeros((5, 4), dtype=np.float32), -1, 0.9, 8),
        (np.zeros((5, 4), dtype=np.float32), 1, float("nan"), 8),
        (np.zeros((5, 4), dtype=np.float32), 1, 0.9, 0),
    ],
)
def test_invalid_arguments(embeddings: np.ndarray, k: int, threshold: float, block_size: int) -> None:
    with pytest.raises(ValueError):
        select_diverse(embeddings, k, threshold, block_size=block_size)


def test_diversity_score() -> None:
    same = np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (4, 1))
    assert diversity_score(same) == pytest.approx(0.0, abs=1e-12)
    assert diversity_score(np.eye(5)) == pytest.approx(1.0)
    assert diversity_score(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert diversity_score(np.array([[3.0, 0.0], [0.0, 0.5]])) == pytest.approx(1.0)  # norms do not matter
    assert diversity_score(np.zeros((1, 3)) + 1) == 0.0
    rng = np.random.default_rng(12)
    rows = _normalise(rng.standard_normal((30, 8)))
    pairs = rows.astype(np.float64) @ rows.T.astype(np.float64)
    expected = 1.0 - pairs[np.triu_indices(30, 1)].mean()
    assert diversity_score(rows) == pytest.approx(expected)
    with pytest.raises(ValueError):
        diversity_score(np.zeros((2, 3)))
