"""Scores of answers against references: exact match after normalisation, BLEU, ROUGE-L, and the paired
bootstrap interval of the accuracy difference of two models answering the same examples.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass


METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "perplexity",
    "bleu",
    "rouge_l",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_s",
    "cost_per_1k_tokens",
    "cost_per_1k_calls",
    "n",
)
_EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation (keys in :data:`METRIC_KEYS`), answers and per-example correctness in row order."""

    metrics: dict[str, float]
    outputs: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)


def normalise(text: str) -> str:
    """Lowercase, collapse runs of whitespace and strip punctuation at both ends.

    Args:
        text: An answer or a reference.

    Returns:
        The normalised text, e.g. ``"  Paris, so  Paris. "`` -> ``"paris, so paris"``.
    """
    return re.sub(r"\s+", " ", text.lower()).strip().strip(_EDGE_PUNCT).strip()


def paired_bootstrap(
    candidate_correct: Sequence[bool] | np.ndarray,
    baseline_correct: Sequence[bool] | np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Confidence interval of the accuracy difference of two models scored on the same examples.

    Each resample draws example indices with replacement and takes the mean of (candidate - baseline) over
    them, so an example is always drawn for both models together (a paired bootstrap): what the two models
    have in common, such as the examples both find easy, cancels out. The interval is the percentile
    interval of the resampled means.

    Args:
        candidate_correct: Per-example correctness (bool or 0/1) of the candidate.
        baseline_correct: The baseline's, on the same examples in the same order.
        resamples: Bootstrap resamples.
        confidence: Two-sided level; the lower bound is the ``(1 - confidence) / 2`` quantile.
        seed: Seed of the resampling (the same inputs and seed give the same interval).

    Returns:
        ``(diff, low, high)``: the observed accuracy difference and the interval's bounds.

    Raises:
        ValueError: The sequences are empty or of different lengths, or ``resamples``/``confidence`` are
            out of range.
    """
    c = np.asarray(candidate_correct, dtype=np.float64)
    b = np.asarray(baseline_correct, dtype=np.float64)
    if c.ndim != 1 or c.shape != b.shape or c.size == 0:
        raise ValueError(f"need two equally long, non-empty 1-d sequences, got shapes {c.shape} and {b.shape}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    d = c - b
    n = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, 4_000_000 // n)  # index blocks of at most ~32 MB
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(d.mean()), float(low), float(high)


def score_answers(outputs: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], list[bool]]:
    """Accuracy (exact match after :func:`normalise`), corpus BLEU and mean ROUGE-L F1 of answers.

    Returns:
        ``{"accuracy", "bleu", "rouge_l"}`` and the per-example exact-match results.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    correct = [normalise(o) == normalise(r) for o, r in zip(outputs, references, strict=True)]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, references, strict=True)]
    return {
        "accuracy": sum(correct) / len(correct),
        "bleu": float(sacrebleu.corpus_bleu(list(outputs), [list(references)]).score),
        "rouge_l": sum(rouge) / len(rouge),
    }, correct
