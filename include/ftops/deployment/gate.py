"""The deployment gate: a candidate ships only if it beats the baseline on every configured criterion.

Criteria (thresholds in :class:`ftops.config.GateConfig`): enough test examples; an accuracy gain of at
least ``min_accuracy_gain``; an absolute accuracy of at least ``min_accuracy`` (the first model of a task
type is compared only with the untuned base model, which almost any fine-tune beats); a gain whose lower
confidence bound (paired bootstrap over the same examples, :func:`ftops.evaluation.paired_bootstrap`) is
above ``min_lower_bound_gain``, so that a gain the test set cannot tell from luck does not ship; no
perplexity rise beyond ``max_perplexity_increase``; a p50 latency rise under ``max_latency_increase_ms``;
and a cost per 1 000 tokens within ``max_cost_per_1k_tokens``. Whatever the baseline, the candidate must also
beat the best trivial baseline of its dataset (a constant answer: the most common training reply, the
majority label for a label-like task, :mod:`ftops.evaluation.baselines`), with the paired confidence interval
of that gain excluding zero: a model that answers the same thing to every prompt never ships.
For a fine-tune started by an ``error_pattern`` decision the failure slice (:mod:`ftops.evaluation.slices`) is
reported as a line of its own; with ``require_slice_improvement`` it is a criterion (:func:`slice_check`).
Every criterion is reported in words, passed or failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ftops.core.config import GateConfig
from ftops.evaluation.slices import NO_REFERENCE, describe_slice


@dataclass(frozen=True)
class TrivialComparison:
    """The candidate against the best trivial baseline, on the same test examples."""

    name: str  # e.g. 'majority label "Sentiment: negative."'
    accuracy: float
    gain_ci: tuple[float, float, float]  # (candidate - trivial, CI low, CI high) from a paired bootstrap


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]  # every criterion, passed or failed, in words

    @property
    def decision(self) -> str:
        return "deploy" if self.passed else "archive"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "decision": self.decision}


def apply_gate(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float],
    cfg: GateConfig,
    accuracy_ci: tuple[float, float, float] | None = None,
    trivial: TrivialComparison | None = None,
    failure_slice: Mapping[str, str] | None = None,
) -> GateDecision:
    """Compare candidate and baseline metrics evaluated on the same test examples.

    Args:
        candidate: ``accuracy``, ``perplexity``, ``latency_p50_ms``, ``n`` and, for the cost ceiling,
            ``cost_per_1k_tokens``.
        baseline: The same keys for the baseline (champion or base model).
        cfg: The thresholds.
        accuracy_ci: ``(diff, low, high)`` of the accuracy gain from
            :func:`ftops.evaluation.paired_bootstrap` at ``cfg.confidence``. The pipeline always passes it;
            without it (aggregate metrics only) the lower-bound criterion is left out of the decision.
        trivial: The best trivial baseline of the dataset and the paired CI of the candidate's gain over it.
            The pipeline always passes it; the gain's lower bound must be above zero.
        failure_slice: The failure slice's report (:func:`ftops.evaluation.slices.slice_report`) of a fine-tune
            started by an error pattern; see :func:`slice_check`.

    Returns:
        The decision with one line per criterion, prefixed ``ok`` or ``FAIL``.
    """
    checks: list[tuple[bool, str]] = []
    n = int(candidate["n"])
    checks.append((n >= cfg.min_test_examples, f"test examples {n} (need ≥ {cfg.min_test_examples})"))
    gain = candidate["accuracy"] - baseline["accuracy"]
    checks.append((gain >= cfg.min_accuracy_gain - 1e-12,
                   f"accuracy {candidate['accuracy']:.3f} vs {baseline['accuracy']:.3f}: gain {gain:+.3f} "
                   f"(need ≥ {cfg.min_accuracy_gain:+.3f})"))  # fmt: skip
    checks.append((candidate["accuracy"] >= cfg.min_accuracy - 1e-12,
                   f"accuracy {candidate['accuracy']:.3f} (floor ≥ {cfg.min_accuracy:.3f}, whatever the baseline)"))
    if accuracy_ci is not None:
        _, low, high = accuracy_ci
        checks.append((low > cfg.min_lower_bound_gain,
                       f"accuracy gain {cfg.confidence:.0%} CI [{low:+.3f}, {high:+.3f}] on the same {n} examples: "
                       f"lower bound {low:+.3f} (need > {cfg.min_lower_bound_gain:+.3f})"))  # fmt: skip
    if trivial is not None:
        _, low, high = trivial.gain_ci
        checks.append((low > 0,
                       f"accuracy {candidate['accuracy']:.3f} vs trivial baseline {trivial.name} {trivial.accuracy:.3f}: "
                       f"gain {trivial.gain_ci[0]:+.3f}, {cfg.confidence:.0%} CI [{low:+.3f}, {high:+.3f}] "
                       "(need lower bound > 0, whatever the baseline)"))  # fmt: skip
    if math.isnan(candidate["perplexity"]) and math.isnan(baseline["perplexity"]):
        checks.append((True, "perplexity not measured: API models return no log-likelihood of a reference"))
    else:
        ppl_rise = candidate["perplexity"] - baseline["perplexity"]  # one NaN fails: NaN <= x is False
        checks.append((ppl_rise <= cfg.max_perplexity_increase,
                       f"perplexity {candidate['perplexity']:.2f} vs {baseline['perplexity']:.2f} "
                       f"(rise allowed ≤ {cfg.max_perplexity_increase:g})"))  # fmt: skip
    lat_rise = candidate["latency_p50_ms"] - baseline["latency_p50_ms"]
    checks.append((lat_rise < cfg.max_latency_increase_ms,
                   f"p50 latency {candidate['latency_p50_ms']:.1f} ms vs {baseline['latency_p50_ms']:.1f} ms "
                   f"(rise allowed < {cfg.max_latency_increase_ms:g} ms)"))  # fmt: skip
    cost = candidate.get("cost_per_1k_tokens", math.nan)
    if cfg.max_cost_per_1k_tokens is None:
        shown = "not measured" if math.isnan(cost) else f"{cost:.6g}"
        checks.append((True, f"cost per 1 000 tokens {shown} (no ceiling configured)"))
    else:
        checks.append((cost <= cfg.max_cost_per_1k_tokens,  # an unmeasured (NaN) cost fails a ceiling
                       f"cost per 1 000 tokens {cost:.6g} (ceiling {cfg.max_cost_per_1k_tokens:g})"))  # fmt: skip
    if (sliced := slice_check(failure_slice, cfg)) is not None:
        checks.append(sliced)
    return GateDecision(all(ok for ok, _ in checks), [f"{'ok' if ok else 'FAIL'}: {text}" for ok, text in checks])


def slice_check(report: Mapping[str, str] | None, cfg: GateConfig) -> tuple[bool, str] | None:
    """The failure-slice criterion: with ``require_slice_improvement`` the candidate's fixed rate on the cluster
    that started its training must exceed the champion's; without it the line only reports the rates.

    A slice with no reference (no prompt of the cluster was corrected or relabelled) fails when improvement is
    required. Passing it with a warning would make the switch a no-op exactly when nobody can tell whether the
    failures were fixed, and a team that turns the switch on has said the cluster must be shown fixed before a
    model ships. The cost is that such candidates are archived until the cluster has references (corrections or
    a teacher) or the switch is turned off; the line says so. A tie (both rates equal, e.g. both 1.0) fails too:
    it shows no fix.

    Args:
        report: :func:`ftops.evaluation.slices.slice_report`'s tags; None when the fine-tune was not started by
            an error pattern (no line).
        cfg: The gate's thresholds (``require_slice_improvement``).

    Returns:
        ``(passed, text)`` for the gate's reasons, or None without a slice.
    """
    line = describe_slice(report or {})
    if report is None or line is None:
        return None
    if not cfg.require_slice_improvement:
        return True, f"{line} (reported only: gate.require_slice_improvement is off)"
    if report.get("slice.reference", NO_REFERENCE) == NO_REFERENCE or "metric.slice_fixed_rate" not in report:
        return False, (f"{line}; gate.require_slice_improvement needs the slice to improve and there is nothing to "
                       "prove the fix on: collect corrections (or teacher answers) for these prompts, or turn the "
                       "switch off")  # fmt: skip
    candidate, champion = float(report["metric.slice_fixed_rate"]), float(report["metric.slice_fixed_rate_champion"])
    return candidate > champion, f"{line} (need candidate > champion: gate.require_slice_improvement)"
