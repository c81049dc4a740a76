"""How far a judge can be trusted: its agreement with the human labels of an eval set, recorded on the model.

For each eval-set row, the judge sees the question and two answers without a reference: the row's own
reference (the human label) and a distractor, another row's reference chosen deterministically, in a
deterministic random order with as many references shown first as second. It is right when it picks the
reference's position. Agreement is Cohen's kappa over the pairs (labels ``A``/``B``, judge ``A``/``B``/``tie``)
and plain accuracy: a judge that always says ``A`` is right half the time and gets kappa 0.

:func:`record_calibration` writes the figures as tags of the registered model ``ftops-<task_type>``
(``judge.kappa``, ``judge.accuracy``, ``judge.model``, ``judge.evalset``, ``judge.calibrated_at``,
``judge.pairs``), where the gate reads them back (:func:`read_calibration`).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import JudgeConfig
from ftops.evaluation.judge import UNPARSEABLE, Request, VerdictCache, cache_key, cost, judge_messages, run_requests

if TYPE_CHECKING:
    import openai


log = logging.getLogger(__name__)
HUMAN_SOURCES: tuple[str, ...] = ("human", "imported", "correction")
"""Eval-set row sources whose reference a person gave; ``teacher`` rows are a model's answers, not labels."""


@dataclass(frozen=True)
class JudgeCalibration:
    """A judge's agreement with an eval set's labels (as recorded on the registered model)."""

    model: str
    kappa: float
    accuracy: float
    pairs: int
    evalset: str
    calibrated_at: str  # ISO 8601, UTC
    calls: int = 0
    cached: int = 0
    ties: int = 0
    unparseable: int = 0
    cost: float = 0.0

    def tags(self) -> dict[str, str]:
        """The registered-model tags of this calibration."""
        return {"judge.kappa": f"{self.kappa:.4f}", "judge.accuracy": f"{self.accuracy:.4f}", "judge.model": self.model,
                "judge.evalset": self.evalset, "judge.calibrated_at": self.calibrated_at,
                "judge.pairs": str(self.pairs)}  # fmt: skip


def cohen_kappa(labels: Sequence[str], predictions: Sequence[str]) -> float:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e).

    p_o is the share of items where they agree, p_e the agreement expected by chance from each rater's own
    category shares. When chance agreement is certain (both raters constant), kappa is 1 if they agree and 0
    otherwise.

    Raises:
        ValueError: Empty or of different lengths.
    """
    if not labels or len(labels) != len(predictions):
        raise ValueError(f"need two equally long, non-empty rating lists, got {len(labels)} and {len(predictions)}")
    n = len(labels)
    p_o = sum(a == b for a, b in zip(labels, predictions, strict=True)) / n
    first, second = Counter(labels), Counter(predictions)
    p_e = sum(first[k] * second[k] for k in first) / (n * n)
    if p_e >= 1:
        return 1.0 if p_o >= 1 else 0.0
    return (p_o - p_e) / (1 - p_e)


def row_prompt(row: Mapping[str, Any]) -> str:
    """An eval-set row's prompt: ``prompt``, or the last user turn of ``messages``.

    Raises:
        ValueError: The row has neither.
    """
    if isinstance(row.get("prompt"), str):
        return str(row["prompt"])
    for message in reversed(row.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    raise ValueError("an eval-set row needs a prompt or a user turn in messages")


def calibration_pairs(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> list[tuple[str, str, str, str]]:
    """``(question, answer A, answer B, label)`` per row: its reference against another row's, deterministically.

    The distractor of row ``i`` is the first row after ``i`` in a seeded permutation whose reference differs
    from row ``i``'s (after normalisation); the label says where the reference is shown, and the labels are
    balanced (half ``A``, half ``B``, in a seeded order).

    Raises:
        ValueError: Fewer than two distinct references (no distractor exists).
    """
    from ftops.evaluation.metrics import normalise

    refs = [str(r["reference"]) for r in rows]
    keys = [normalise(x) for x in refs]
    if len(set(keys)) < 2:
        raise ValueError(f"calibration needs at least two different references, got {len(set(keys))}")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    place = {i: p for p, i in enumerate(order)}
    labels = ["A"] * ((len(rows) + 1) // 2) + ["B"] * (len(rows) // 2)
    rng.shuffle(labels)
    pairs = []
    for i, row in enumerate(rows):
        j = next(order[(place[i] + k) % len(order)] for k in range(1, len(order))
                 if keys[order[(place[i] + k) % len(order)]] != keys[i])  # fmt: skip
        a, b = (refs[i], refs[j]) if labels[i] == "A" else (refs[j], refs[i])
        pairs.append((row_prompt(row), a, b, labels[i]))
    return pairs


def calibrate(
    client: openai.OpenAI,
    cfg: JudgeConfig,
    rows: Sequence[Mapping[str, Any]],
    *,
    evalset: str,
    task_type: str | None = None,
    sources: Collection[str] | None = HUMAN_SOURCES,
    cache: VerdictCache | None = None,
    seed: int = 0,
) -> JudgeCalibration:
    """Measure the judge's agreement with an eval set's labels (one call per row, cached and budgeted).

    Args:
        client: An ``openai.OpenAI`` client for the judge's endpoint.
        cfg: The judge settings.
        rows: Eval-set rows ``{"prompt" | "messages", "reference", "source"}``.
        evalset: The eval-set version's tag (``evalset/<task_type>/v<N>``), recorded with the figures.
        task_type: Shown to the judge as context.
        sources: Rows whose ``source`` is one of these count (rows without a source count too); None: all rows.
        cache: Verdict cache (default ``FTOPS_HOME/cache/judge``).
        seed: Seed of the pairing and of the answer order.

    Returns:
        The calibration (kappa, accuracy, pairs, calls, cost).

    Raises:
        ValueError: Fewer than two usable rows, or fewer than two different references.
        JudgeBudgetError: More than ``cfg.max_calls`` new calls would be needed (nothing is spent).
        RetryableAPIError: The judge stayed unavailable after the client's retries.
        APIRequestError: The judge refused the request.
    """
    used = [r for r in rows if sources is None or r.get("source") in (None, *sources)]
    if len(used) < 2:
        raise ValueError(f"{evalset}: {len(used)} of {len(rows)} rows have a human label (sources {sources}); "
                         "calibration needs at least two")  # fmt: skip
    pairs = calibration_pairs(used, seed)
    requests = [Request(cache_key(cfg.model, q, None, a, b),
                        judge_messages(q, a, b, task=task_type, max_chars=cfg.max_answer_chars))
                for q, a, b, _ in pairs]  # fmt: skip
    verdicts, usage = run_requests(client, cfg, requests, cache)
    said = ["tie" if v == UNPARSEABLE else v for v in verdicts]
    labels = [label for *_, label in pairs]
    result = JudgeCalibration(
        model=cfg.model, kappa=cohen_kappa(labels, said), pairs=len(pairs), evalset=evalset,
        accuracy=sum(a == b for a, b in zip(labels, said, strict=True)) / len(pairs),
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"), calls=usage.calls, cached=usage.cached,
        ties=said.count("tie"), unparseable=verdicts.count(UNPARSEABLE), cost=cost(cfg, usage.tokens),
    )  # fmt: skip
    log.info("Judge %s on %s: kappa %.3f, accuracy %.3f over %d pairs (%d ties, %d unparseable); %d calls, %d "
             "cached, cost %.4f", cfg.model, evalset, result.kappa, result.accuracy, result.pairs, result.ties,
             result.unparseable, result.calls, result.cached, result.cost)  # fmt: skip
    return result


def record_calibration(task_type: str, calibration: JudgeCalibration) -> None:
    """Write the calibration as tags of the registered model ``ftops-<task_type>`` (created when missing)."""
    from ftops.registry import models as registry

    registry.set_model_tags(task_type, calibration.tags())
    log.info("Recorded judge calibration on %s: kappa %.3f (%s)", registry.model_name(task_type), calibration.kappa,
             calibration.evalset)  # fmt: skip


def read_calibration(task_type: str) -> JudgeCalibration | None:
    """The calibration recorded on ``ftops-<task_type>``, or None (no model, or never calibrated).

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    from ftops.registry import models as registry

    tags = registry.model_tags(task_type)
    if "judge.kappa" not in tags:
        return None
    return JudgeCalibration(model=tags.get("judge.model", "?"), kappa=float(tags["judge.kappa"]),
                            accuracy=float(tags.get("judge.accuracy", "nan")), pairs=int(tags.get("judge.pairs", "0")),
                            evalset=tags.get("judge.evalset", "?"), calibrated_at=tags.get("judge.calibrated_at", "?"))  # fmt: skip
