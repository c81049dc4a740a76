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

For a task type scored by an LLM judge (``evaluation.metrics: {T: judge}``), :func:`judge_criteria` adds two:
the judge's recorded calibration reaches ``evaluation.judge.min_kappa``, and the judge's net win of the
candidate over the champion has a confidence interval above zero.

A candidate that would replace an upstream champion (a hosted model behind a connection, ``ftops
register-upstream``) faces the replacement gate instead (:func:`replacement_checks`): not worse within
``replace_margin``, at least ``min_saving`` cheaper per 1 000 calls, p95 latency under ``max_latency_p95_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ftops.core.config import GateConfig, JudgeConfig
from ftops.evaluation.slices import NO_REFERENCE, describe_slice

if TYPE_CHECKING:
    from ftops.evaluation.judge import JudgeResult
    from ftops.evaluation.judge_calibration import JudgeCalibration


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
    judged: Sequence[str] | None = None,
    yardstick: str | None = None,
    replacing: str | None = None,
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
        judged: The judge's criteria (:func:`judge_criteria`, ``ok:``/``FAIL:`` lines) of a task type with
            ``metric: judge``: they decide quality, and the exact-match accuracy criteria are reported only (a
            free-text answer is right in many wordings).
        yardstick: What the models were measured on, in words; the decision's first line (``ok: yardstick ...``).
        replacing: The upstream champion's model name when the candidate would replace one: the replacement
            gate (:func:`replacement_checks`) instead of the gain, perplexity and p50 criteria.

    Returns:
        The decision with one line per criterion, prefixed ``ok`` or ``FAIL``.
    """
    checks: list[tuple[bool, str]] = [(True, f"yardstick {yardstick}")] if yardstick else []
    n = int(candidate["n"])
    checks.append((n >= cfg.min_test_examples, f"test examples {n} (need ≥ {cfg.min_test_examples})"))
    gain = candidate["accuracy"] - baseline["accuracy"]
    if replacing is None:
        checks.append((gain >= cfg.min_accuracy_gain - 1e-12,
                       f"accuracy {candidate['accuracy']:.3f} vs {baseline['accuracy']:.3f}: gain {gain:+.3f} "
                       f"(need ≥ {cfg.min_accuracy_gain:+.3f})"))  # fmt: skip
    checks.append((candidate["accuracy"] >= cfg.min_accuracy - 1e-12,
                   f"accuracy {candidate['accuracy']:.3f} (floor ≥ {cfg.min_accuracy:.3f}, whatever the baseline)"))
    if replacing is not None:
        checks += replacement_checks(candidate, baseline, cfg, accuracy_ci, replacing)
    elif accuracy_ci is not None:
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
    # Against an upstream champion perplexity and p50 are not compared (replacement_checks says so)
    if replacing is None and math.isnan(candidate["perplexity"]) and math.isnan(baseline["perplexity"]):
        checks.append((True, "perplexity not measured: API models return no log-likelihood of a reference"))
    elif replacing is None:
        ppl_rise = candidate["perplexity"] - baseline["perplexity"]  # one NaN fails: NaN <= x is False
        checks.append((ppl_rise <= cfg.max_perplexity_increase,
                       f"perplexity {candidate['perplexity']:.2f} vs {baseline['perplexity']:.2f} "
                       f"(rise allowed ≤ {cfg.max_perplexity_increase:g})"))  # fmt: skip
    if replacing is None:
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
    if judged is not None:
        checks = [(True, f"{text} (reported only: metric judge)") if text.startswith("accuracy") else (ok, text)
                  for ok, text in checks]  # fmt: skip
        checks += [(line.startswith("ok:"), line.split(": ", 1)[-1]) for line in judged]
    return GateDecision(all(ok for ok, _ in checks), [f"{'ok' if ok else 'FAIL'}: {text}" for ok, text in checks])


def replacement_checks(
    candidate: Mapping[str, float], champion: Mapping[str, float], cfg: GateConfig,
    accuracy_ci: tuple[float, float, float] | None, upstream: str,
) -> list[tuple[bool, str]]:
    """The replacement gate's criteria, for a candidate that would replace an upstream champion.

    Not worse on the yardstick: the accuracy gain's lower confidence bound above ``-replace_margin`` (a judged
    task type's net win is held to the same margin by :func:`judge_criteria`); cheaper: cost per 1 000 calls at
    least ``min_saving`` below the champion's (the champion's from its token prices, the candidate's from its
    decode time and ``compute_cost_per_hour``: unpriced local compute fails, as a saving against an unknown cost
    cannot be shown); fast enough: p95 latency of single requests under ``max_latency_p95_ms``. Perplexity is
    not compared (an API returns no likelihood of a reference), nor p50 against the champion (its latency is
    someone else's machine and network).
    """
    margin = cfg.replace_margin
    checks: list[tuple[bool, str]] = []
    if accuracy_ci is None:
        checks.append((False, f"accuracy not worse than upstream {upstream}: no confidence interval of the gain"))
    else:
        diff, low, high = accuracy_ci
        checks.append((low > -margin - 1e-12,
                       f"accuracy not worse than upstream {upstream}: {candidate['accuracy']:.3f} vs "
                       f"{champion['accuracy']:.3f}, gain {diff:+.3f}, {cfg.confidence:.0%} CI [{low:+.3f}, {high:+.3f}]: "
                       f"lower bound {low:+.3f} (need > -{margin:g}, gate.replace_margin)"))  # fmt: skip
    mine, theirs = candidate.get("cost_per_1k_calls", math.nan), champion.get("cost_per_1k_calls", math.nan)
    if not math.isfinite(theirs) or theirs <= 0:
        checks.append((False, f"cost per 1 000 calls of upstream {upstream} not measured (its version has no "
                              "prices, or its API reported no token usage): no saving can be shown"))  # fmt: skip
    elif cfg.compute_cost_per_hour <= 0:
        checks.append((False, f"cost per 1 000 calls of the candidate unknown: gate.compute_cost_per_hour is 0 (set "
                              f"the hourly price of the machine that serves it); upstream {upstream}: {theirs:.4g}"))
    else:
        saving = 1 - mine / theirs
        checks.append((saving >= cfg.min_saving - 1e-12,
                       f"cost per 1 000 calls {mine:.4g} vs upstream {upstream} {theirs:.4g}: saving {saving:.1%} "
                       f"(need ≥ {cfg.min_saving:.0%}, gate.min_saving)"))  # fmt: skip
    p95 = candidate.get("latency_p95_ms", math.nan)
    checks.append((p95 < cfg.max_latency_p95_ms,  # NaN (not measured) fails
                   f"p95 latency {p95:.0f} ms (need < {cfg.max_latency_p95_ms:g} ms, gate.max_latency_p95_ms; "
                   f"upstream {upstream}: {champion.get('latency_p95_ms', math.nan):.0f} ms, network included)"))
    checks.append((True, "perplexity not compared: the champion is an upstream model (compared only between two "
                         "local models)"))  # fmt: skip
    return checks


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


def judge_trust(calibration: JudgeCalibration | None, cfg: JudgeConfig, task_type: str) -> tuple[bool, str]:
    """Whether the gate may rely on the configured judge for a task type, and why, in one line.

    It may when the judge's recorded calibration (:func:`ftops.evaluation.judge_calibration.read_calibration`)
    is of the configured judge model and its kappa is at least ``cfg.min_kappa``. Call it before judging, so an
    untrusted judge costs nothing.
    """
    how = f"`ftops judge calibrate --task-type {task_type}` on its latest eval set"
    if calibration is None:
        return False, (f"judge {cfg.model} was never calibrated for {task_type}: the gate does not rely on an "
                       f"unmeasured judge (needs kappa ≥ {cfg.min_kappa:.2f}); run {how}")  # fmt: skip
    if calibration.model != cfg.model:
        return False, (f"the recorded judge calibration (kappa {calibration.kappa:.3f}) is of {calibration.model}, "
                       f"but the configured judge is {cfg.model}: run {how}")  # fmt: skip
    c = calibration
    seen = (f"judge {cfg.model} kappa {c.kappa:.3f} (accuracy {c.accuracy:.3f} on {c.pairs} pairs of {c.evalset}, "
            f"calibrated {c.calibrated_at})")  # fmt: skip
    if calibration.kappa < cfg.min_kappa:
        return False, (f"{seen} is below evaluation.judge.min_kappa {cfg.min_kappa:.2f}: the gate does not rely on "
                       f"it; use a better judge model (or lower min_kappa knowingly) and run {how}")  # fmt: skip
    return True, f"{seen} (need ≥ {cfg.min_kappa:.2f})"


def judge_criteria(
    result: JudgeResult | None, calibration: JudgeCalibration | None, cfg: JudgeConfig, task_type: str,
    margin: float = 0.0,
) -> list[str]:
    """The gate's judge criteria for a task type with ``metric: judge``, as ``ok:``/``FAIL:`` lines.

    Two criteria: the judge is trusted (:func:`judge_trust`), and the candidate's net win over the champion
    (wins - losses, per prompt, judged in both answer orders) has a confidence interval whose lower bound is
    above zero.

    Args:
        result: The judge's comparison (:func:`ftops.evaluation.judge.compare_answers`), or None when it was
            not run (an untrusted judge is not asked).
        calibration: The recorded calibration of the task type's judge, or None.
        cfg: ``evaluation.judge``.
        task_type: For the messages.
        margin: How far below zero the net win's lower bound may be: ``gate.replace_margin`` when the champion
            is an upstream model (not worse), else 0 (better).

    Returns:
        One line per criterion, like :func:`apply_gate`'s reasons; the candidate passes only if all are ``ok``.
    """
    trusted, why = judge_trust(calibration, cfg, task_type)
    lines = [f"{'ok' if trusted else 'FAIL'}: {why}"]
    if result is None:
        return lines + ["FAIL: judge not run: no net win measured"]
    low, high = result.net_win_ci
    need = f"> -{margin:g}, not worse: gate.replace_margin" if margin else "> 0"
    lines.append(f"{'ok' if low > -margin else 'FAIL'}: judge net win {result.net_win:+.3f} over the champion ({result.wins} "
                 f"wins, {result.ties} ties, {result.losses} losses of {result.n}; win rate {result.win_rate:.3f}"
                 + (f"; {result.unparseable} unparseable verdicts" if result.unparseable else "")
                 + f"), {result.confidence:.0%} CI [{low:+.3f}, {high:+.3f}]: lower bound (need {need})")  # fmt: skip
    return lines
