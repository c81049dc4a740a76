"""Trivial baselines computed from the dataset itself: what a model that ignores the prompt would score.

A fine-tuned model must beat answering the same thing to every prompt. The untuned base model is no such
bar (a tiny base model scores 0 and almost anything beats it), so the gate also compares the candidate with
the constant answer that scores best on the training split: its most common reply. For a label-like task
(few distinct replies, as in classification) that constant is the majority label, and it is named so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftops.core.chat import split_conversation
from ftops.evaluation.metrics import normalise

# A task is label-like when its training replies take at most this many distinct values, or at most this
# share of the replies are distinct: e.g. 3 sentiment templates over 400 replies, not 400 city sentences.
LABEL_LIKE_MAX_DISTINCT = 20
LABEL_LIKE_MAX_SHARE = 0.05


@dataclass(frozen=True)
class TrivialBaseline:
    """A constant answer and how it scores on the test split (per example, in test-row order)."""

    name: str
    answer: str
    correct: list[bool] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "answer": self.answer, "accuracy": self.accuracy, "n": len(self.correct)}


def _replies(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [split_conversation(row["messages"])[1] for row in rows]


def is_label_like(replies: Sequence[str]) -> bool:
    """Whether replies take few distinct values (after :func:`normalise`), as a classification's labels do."""
    distinct = len({normalise(r) for r in replies})
    return bool(replies) and (distinct <= LABEL_LIKE_MAX_DISTINCT or distinct <= LABEL_LIKE_MAX_SHARE * len(replies))


def trivial_baselines(
    train_rows: Sequence[Mapping[str, Any]], test_rows: Sequence[Mapping[str, Any]]
) -> list[TrivialBaseline]:
    """The constant-answer baseline of a dataset version, scored on its test split like a model.

    The constant is the training split's most common reply (compared after :func:`normalise`, answered in
    its most common written form); ties go to the reply seen first. Scoring is exact match after
    normalisation, as for models, so a model that always gives this reply scores exactly this.

    Args:
        train_rows: Chat rows of the training split (where the constant is learnt).
        test_rows: Chat rows of the test split (where it is scored).

    Returns:
        One baseline (an empty list when the training split is empty).
    """
    replies = _replies(train_rows)
    if not replies:
        return []
    counts = Counter(normalise(r) for r in replies)
    top = max(counts, key=lambda k: (counts[k], -next(i for i, r in enumerate(replies) if normalise(r) == k)))
    written = Counter(r.strip() for r in replies if normalise(r) == top).most_common(1)[0][0]
    name = "majority label" if is_label_like(replies) else "most common training reply"
    correct = [normalise(ref) == top for ref in _replies(test_rows)]
    return [TrivialBaseline(name=name, answer=written, correct=correct)]


def best_trivial(baselines: Sequence[TrivialBaseline]) -> TrivialBaseline | None:
    """The trivial baseline with the highest test accuracy, or None when there is none."""
    return max(baselines, key=lambda b: b.accuracy, default=None)
