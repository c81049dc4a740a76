"""Failure slices: did the new model fix the failures that triggered its training?

When the governor's ``error_pattern`` policy starts a fine-tune, the prompts of the failure cluster it found
form a slice (built from the warehouse by :func:`ftops.pipeline.slices.failure_slice`). Each prompt with a
reference (a user's or a review tool's ``correction``, later a teacher's answer) becomes a test row; candidate
and champion answer the same rows, and the share each gets right is its *fixed rate*. Prompts without any
reference are counted, never guessed: a slice with none is reported as ``reference: none`` and gets no rate.

Everything here is ids, counts and rates: the slice's rows (scrubbed prompts and references) are handed to
the evaluation on the worker and never reach XCom, MLflow tags or logs. The report's keys are the model-version
tags of the issue-20 contract (``slice.pattern``, ``slice.size``, ``slice.reference``,
``metric.slice_fixed_rate``, ``metric.slice_fixed_rate_champion``), plus ``slice.with_reference``, the rows
the rates are measured on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Where a slice row's reference came from, in order of trust (a correction outranks a teacher's answer).
SOURCES = ("corrections", "teacher")
NO_REFERENCE = "none"


@dataclass(frozen=True)
class FailureSlice:
    """The prompts of one failure cluster, as test rows where a reference exists.

    ``rows[i]`` is ``{"messages": [user prompt, assistant reference]}`` (both scrubbed), with its log row id in
    ``row_ids[i]`` and its reference's source (``corrections`` | ``teacher``) in ``sources[i]``.
    """

    task_type: str
    pattern: str  # the cluster id, e.g. pattern-1a2b3c4d
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    without_reference: int = 0  # prompts of the cluster with no correction and no teacher answer
    unsafe: int = 0  # prompts left out: a secret in them (or in their reference) could not be removed for sure
    missing: int = 0  # row ids no longer readable: erased (``ftops erase``) or deleted from the log

    def __post_init__(self) -> None:
        if not len(self.rows) == len(self.row_ids) == len(self.sources):
            raise ValueError("rows, row_ids and sources must be of the same length")
        unknown = set(self.sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown reference sources {sorted(unknown)}; known: {SOURCES}")

    @property
    def size(self) -> int:
        """Prompts of the cluster read from the log: with a reference, without one, and left out as unsafe."""
        return len(self.rows) + self.without_reference + self.unsafe

    @property
    def reference(self) -> str:
        """``corrections``, ``teacher``, both joined by ``+`` (``corrections+teacher``), or ``none``."""
        present = [s for s in SOURCES if s in self.sources]
        return "+".join(present) if present else NO_REFERENCE

    def counts(self) -> dict[str, Any]:
        """Ids and counts only (no text): safe for task logs and XCom."""
        return {"task_type": self.task_type, "pattern": self.pattern, "size": self.size,
                "reference": self.reference, "with_reference": len(self.rows),
                "without_reference": self.without_reference, "unsafe": self.unsafe, "missing": self.missing}  # fmt: skip


def slice_fixed_rate(correct: Sequence[bool]) -> float:
    """The share of a slice's prompts a model now answers right (matching their references).

    Raises:
        ValueError: No answers: a slice without references has no rate (it is not 0).
    """
    if not correct:
        raise ValueError("no slice rows with a reference: the fixed rate is undefined")
    return sum(bool(c) for c in correct) / len(correct)


def slice_report(
    failure_slice: FailureSlice, candidate_correct: Sequence[bool], champion_correct: Sequence[bool]
) -> dict[str, str]:
    """The slice's model-version tags: what was measured and each model's fixed rate.

    Args:
        failure_slice: The slice both models answered (its ``rows``, in order).
        candidate_correct: Per row of the slice, whether the candidate's answer matched the reference (the
            ``correct`` of :func:`ftops.evaluation.evaluate.evaluate` on ``failure_slice.rows``).
        champion_correct: The same for the champion (or the base model when there is no champion yet).

    Returns:
        Tag values as text: ``slice.pattern``, ``slice.size``, ``slice.reference``, ``slice.with_reference``
        and, unless the reference is ``none``, ``metric.slice_fixed_rate`` and
        ``metric.slice_fixed_rate_champion`` (4 decimals).

    Raises:
        ValueError: The answers do not match the slice's rows in number.
    """
    n = len(failure_slice.rows)
    if len(candidate_correct) != n or len(champion_correct) != n:
        raise ValueError(f"the slice has {n} rows with a reference; got {len(candidate_correct)} candidate and "
                         f"{len(champion_correct)} champion verdicts")  # fmt: skip
    report = {"slice.pattern": failure_slice.pattern, "slice.size": str(failure_slice.size),
              "slice.reference": failure_slice.reference, "slice.with_reference": str(n)}  # fmt: skip
    if n:
        report["metric.slice_fixed_rate"] = f"{slice_fixed_rate(candidate_correct):.4f}"
        report["metric.slice_fixed_rate_champion"] = f"{slice_fixed_rate(champion_correct):.4f}"
    return report


def slice_metrics(report: Mapping[str, str]) -> dict[str, float]:
    """The report's rates as MLflow run metrics (``slice_fixed_rate``, ``slice_fixed_rate_champion``); empty
    for a slice without references."""
    return {k.removeprefix("metric."): float(v) for k, v in report.items() if k.startswith("metric.slice_")}


def describe_slice(tags: Mapping[str, str]) -> str | None:
    """One sentence on a model version's failure slice, from its tags (a report or the registry's tags); None
    when the version has no slice (it was not trained on an error pattern).

    Examples: ``failure slice pattern-1a2b3c4d: fixed 0.714 (5/7) vs champion 0.143 (1/7); 12 prompts, 7 with
    corrections`` or ``failure slice pattern-1a2b3c4d: no reference (12 prompts, none corrected or relabelled):
    not measured``.
    """
    pattern = tags.get("slice.pattern")
    if not pattern:
        return None
    size, reference = tags.get("slice.size", "?"), tags.get("slice.reference", NO_REFERENCE)
    if reference == NO_REFERENCE or "metric.slice_fixed_rate" not in tags:
        return f"failure slice {pattern}: no reference ({size} prompts, none corrected or relabelled): not measured"
    n = int(tags.get("slice.with_reference") or 0)
    rates = [float(tags["metric.slice_fixed_rate"]), float(tags.get("metric.slice_fixed_rate_champion", "nan"))]
    shown = [f"{r:.3f}" if math.isnan(r) or not n else f"{r:.3f} ({round(r * n)}/{n})" for r in rates]
    return (f"failure slice {pattern}: fixed {shown[0]} vs champion {shown[1]}; {size} prompts, {n} with "
            f"{reference.replace('+', ' and ')}")  # fmt: skip
