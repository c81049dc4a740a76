"""Unit tests for ftops.curation.selection: the batched greedy selection must match the naive rule exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ftops_dev.baselines import select_diverse_faiss_per_candidate, select_diverse_naive
from threadpoolctl import threadpool_info

from ftops.curation.selection import _head_dims, _with_tail_bound, diversity_score, rounding_margin, select_diverse


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


def test_cheap_pass_is_on_for_high_thresholds_in_384_dims() -> None:
    """The tests below rely on 384-d rows at thresholds 0.8-0.99 taking the partial-dimension pass."""
    assert _head_dims(384, 0.9) == 96
    assert _head_dims(384, 0.8) == 160
    assert _head_dims(384, 0.99) == 64
    assert _head_dims(384, 0.5) == 384  # would need more than half the dimensions: off
    assert _head_dims(32, 0.9) == 32  # too few dimensions: off


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_tail_bound_is_an_upper_bound(seed: int, scale: float) -> None:
    """The partial product plus the tail column never falls below the exact similarity minus the margin."""
    rng = np.random.default_rng(seed)
    rows = (scale * _planted(seed, n=200, dim=384, noise=0.6)).astype(np.float32)
    rows[:20] *= rng.random((20, 1)).astype(np.float32)  # some shorter rows too
    margin = rounding_margin(rows)
    exact = rows.astype(np.float64) @ rows.T.astype(np.float64)
    for head in (32, 96, 192):
        bounded = _with_tail_bound(rows, head)
        assert bool(np.all(bounded @ bounded.T >= exact - margin))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("block_size", [1, 64, 1024])
def test_batched_matches_naive_with_cheap_pass(seed: int, threshold: float, block_size: int) -> None:
    embeddings = _planted(seed, n=500, dim=384, bases=30, noise=0.9)
    kept = _all_three(embeddings, k=10_000, threshold=threshold, block_size=block_size)
    assert 0 < len(kept) < len(embeddings)
    assert _satisfies_rule(embeddings, kept, threshold)


def test_batched_matches_naive_when_the_cheap_pass_leaves_many_pairs() -> None:
    """Rows whose energy sits in the dimensions the cheap pass leaves out: the tail bound rules out no pair,
    so the full product is used instead (the fallback path), with the same selection."""
    embeddings = _planted(13, n=400, dim=384, bases=30, noise=0.9)
    embeddings[:, :192] *= 0.01
    embeddings = _normalise(embeddings)
    for block_size in (7, 1024):
        _all_three(embeddings, k=10_000, threshold=0.9, block_size=block_size)


def test_rows_not_normalised_with_cheap_pass() -> None:
    """The rule is on raw inner products; rows of norm 2 (similarities up to 4) take the same path exactly."""
    embeddings = (2.0 * _planted(14, n=300, dim=384, bases=20, noise=0.9)).astype(np.float32)
    _all_three(embeddings, k=10_000, threshold=3.6, block_size=64)


def test_threshold_at_exact_similarity_with_cheap_pass() -> None:
    """A pair exactly at a threshold of about 0.9 in 384 dimensions, where the cheap pass is on."""
    rng = np.random.default_rng(15)
    base = _normalise(rng.standard_normal((1, 384)))[0]
    near = _normalise((base + 0.45 * _normalise(rng.standard_normal((1, 384)))[0])[None, :])[0]
    others = _normalise(rng.standard_normal((30, 384)))
    embeddings = np.vstack([base, others[:15], near, others[15:]]).astype(np.float32)
    exact = math.fsum((base.astype(np.float64) * near.astype(np.float64)).tolist())
    assert 0.85 < exact < 0.95
    everyone = list(range(len(embeddings)))
    for block_size in (1, 7, 1024):
        kept = _all_three(embeddings, k=100, threshold=exact, block_size=block_size)
        assert kept == [i for i in everyone if i != 16]
        above = float(np.nextafter(exact, 2.0))
        assert _all_three(embeddings, k=100, threshold=above, block_size=block_size) == everyone


@pytest.mark.parametrize("k", [1, 5, 37, 100_000])
def test_k_reached_mid_block_or_never_with_cheap_pass(k: int) -> None:
    embeddings = _planted(16, n=400, dim=384, bases=30, noise=0.9)
    everything = select_diverse_naive(embeddings, 100_000, 0.9)
    assert 37 < len(everything) < len(embeddings)
    for block_size in (16, 1024):
        assert _all_three(embeddings, k=k, threshold=0.9, block_size=block_size) == everything[:k]


def test_blas_thread_limit_is_lifted_afterwards() -> None:
    before = [pool["num_threads"] for pool in threadpool_info()]
    select_diverse(_planted(17, n=300, dim=384), k=50, threshold=0.9)
    assert [pool["num_threads"] for pool in threadpool_info()] == before


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
