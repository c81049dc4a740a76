"""Canary judgement: hold, ramp, promote or roll back a canary from what its users saw, next to the champion.

The judge is a pure function of two windows of live metrics (see
:func:`ftops.warehouse.state.live_metrics`): the canary's and the champion's over the same window (since the
canary was deployed), plus the canary's own calls since its current ramp step began. In order:

1. **Minimum sample.** Fewer than ``min_requests`` canary calls in the window: ``hold``, nothing is judged.
2. **Hard limits.** Error rate ≥ ``max_error_rate`` or p95 latency ≥ ``max_latency_p95_ms``, in the window or
   in the current step (once the step has ``min_requests`` calls, so a breakage that comes with a larger share
   is not diluted by the earlier, smaller one): ``rollback`` at once.
3. **Significantly worse than the champion** (needs ``min_requests`` champion calls in the window; with fewer,
   ``hold``). Each comparison is one-sided (only harm matters) and counts only when it is both significant
   and at least the configured minimum effect, so a negligible difference on a huge sample does not roll back:

   * error rate, and task success (a call that succeeded and, where rated, was rated ``success_min_rating``
     or higher, over all calls): pooled two-proportion z-test, effect ≥ ``min_effect`` (absolute);
   * user rating (only when both have ``min_rated`` rated calls; otherwise it is not compared and does not
     block: many products collect few ratings): Mann-Whitney U (normal approximation with tie and continuity
     corrections; ratings are ordinal 1-5 with many ties, which a t-test on means handles less well), effect =
     drop in mean rating ≥ ``min_rating_drop``.

   The family-wise ``significance`` is split evenly (Bonferroni) over the comparisons made in one review.
   Any one significantly worse: ``rollback``.
4. **Ramp.** A step of ``ramp_percent`` lasts ``duration_hours / len(ramp_percent)`` and needs
   ``min_requests`` calls of its own: until then ``hold``; then ``ramp`` to the next share, or after the last
   step ``promote`` (so promotion comes no earlier than ``duration_hours``).

What this does not guard against, honestly: the canary is reviewed every 30 minutes and each review tests
again on data that includes the previous reviews', so the chance of ever rolling back a canary that is not
worse over a whole ramp is larger than ``significance`` (repeated looks; the minimum effects and Bonferroni
keep it down, and a false rollback costs one retraining, while a missed harm costs users). The z-test is an
approximation that is poor for very rare errors on small samples; the hard error-rate limit covers that case.
At a 100 % step the champion serves nothing new, so it is compared on its calls from the earlier steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ftops.core.config import CanaryConfig

Action = Literal["hold", "ramp", "promote", "rollback"]


@dataclass(frozen=True)
class Comparison:
    """One canary-vs-champion comparison.

    Attributes:
        metric: ``error_rate``, ``task_success_rate`` or ``mean_rating``.
        canary: The canary's value.
        champion: The champion's value.
        harm: How much worse the canary is (positive = worse; error rate up, success or rating down).
        p_value: One-sided p-value of "the canary is worse".
        alpha: The level it was tested at (``significance`` / comparisons made).
        min_effect: The smallest harm that counts.
        worse: Significant and at least ``min_effect``.
    """

    metric: str
    canary: float
    champion: float
    harm: float
    p_value: float
    alpha: float
    min_effect: float
    worse: bool

    def describe(self) -> str:
        verdict = "significantly worse" if self.worse else "not significantly worse"
        return (f"{self.metric} {self.canary:.3f} vs champion {self.champion:.3f}: {verdict} "
                f"(p={self.p_value:.2g}, alpha {self.alpha:.3g}, min effect {self.min_effect:g})")  # fmt: skip


@dataclass(frozen=True)
class RampPosition:
    """Where a canary is on its ramp.

    Attributes:
        step: Index into ``ramp_percent`` (clamped to the last step).
        step_age_hours: How long the current step has run.
        step_metrics: The canary's live metrics since the current step began.
    """

    step: int
    step_age_hours: float
    step_metrics: Mapping[str, Any]


@dataclass(frozen=True)
class CanaryVerdict:
    """What to do with a canary and why.

    Attributes:
        action: ``hold``, ``ramp``, ``promote`` or ``rollback``.
        reason: One line for people (and for the version's tags).
        step: The ramp step judged.
        traffic_percent: The share the canary should serve after the action (None: unchanged; 0 after a
            rollback, 100 after a promotion).
        comparisons: The champion comparisons made (empty when none were).
    """

    action: Action
    reason: str
    step: int = 0
    traffic_percent: int | None = None
    comparisons: tuple[Comparison, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- statistics (pure Python: the normal approximation needs only erfc) ---------------------------------------
def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def proportion_worse_p(canary_hits: int, canary_n: int, champion_hits: int, champion_n: int) -> float:
    """One-sided pooled two-proportion z-test of "the canary's rate is higher than the champion's".

    Pass errors as hits to test a higher error rate, failures (n - successes) to test a lower success rate.

    Returns:
        The p-value; 1.0 when either sample is empty or both rates are 0 or 1 (nothing to tell apart).
    """
    if canary_n <= 0 or champion_n <= 0:
        return 1.0
    pooled = (canary_hits + champion_hits) / (canary_n + champion_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / canary_n + 1 / champion_n))
    if se == 0:
        return 1.0
    return normal_sf((canary_hits / canary_n - champion_hits / champion_n) / se)


def ratings_lower_p(canary_counts: Sequence[int], champion_counts: Sequence[int]) -> float:
    """One-sided Mann-Whitney U test of "the canary's ratings are lower", from counts per rating level.

    Normal approximation with the tie correction and a 0.5 continuity correction (as
    ``scipy.stats.mannwhitneyu(canary, champion, alternative="less", method="asymptotic")``).

    Args:
        canary_counts: Calls rated at each level, lowest level first (e.g. ratings 1-5).
        champion_counts: The same for the champion.

    Returns:
        The p-value; 1.0 when a sample is empty or every rating is the same.
    """
    n1, n2 = sum(canary_counts), sum(champion_counts)
    if n1 == 0 or n2 == 0:
        return 1.0
    total = n1 + n2
    rank_sum = 0.0  # of the canary's ratings, ties at their mid-rank
    below = 0
    ties = 0.0
    for a, b in zip(canary_counts, champion_counts, strict=True):
        t = a + b
        rank_sum += a * (below + (t + 1) / 2)
        below += t
        ties += t**3 - t
    u = rank_sum - n1 * (n1 + 1) / 2
    variance = n1 * n2 / 12 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 + 0.5) / math.sqrt(variance)
    return 1 - normal_sf(z)


def compare(canary: Mapping[str, Any], champion: Mapping[str, Any], cfg: CanaryConfig) -> tuple[Comparison, ...]:
    """Test whether the canary is significantly and materially worse than the champion, metric by metric.

    Args:
        canary: The canary's live metrics (``requests``, ``errors``, ``task_successes``, ``rated``,
            ``rating_counts``, ``mean_rating``...).
        champion: The champion's, over the same window.
        cfg: Significance level and minimum effects.

    Returns:
        Error rate and task success always; mean rating when both have ``min_rated`` rated calls.
    """
    n1, n2 = int(canary["requests"]), int(champion["requests"])
    rate_ok = int(canary.get("rated", 0)) >= cfg.min_rated and int(champion.get("rated", 0)) >= cfg.min_rated
    alpha = cfg.significance / (3 if rate_ok else 2)
    e1, e2 = int(canary["errors"]), int(champion["errors"])
    s1, s2 = int(canary["task_successes"]), int(champion["task_successes"])
    tests = [
        ("error_rate", e1 / n1, e2 / n2, proportion_worse_p(e1, n1, e2, n2), cfg.min_effect),
        ("task_success_rate", s1 / n1, s2 / n2, proportion_worse_p(n1 - s1, n1, n2 - s2, n2), cfg.min_effect),
    ]
    if rate_ok:
        m1, m2 = float(canary["mean_rating"]), float(champion["mean_rating"])
        p = ratings_lower_p(canary["rating_counts"], champion["rating_counts"])
        tests.append(("mean_rating", m1, m2, p, cfg.min_rating_drop))
    out = []
    for metric, c, ch, p, effect in tests:
        harm = c - ch if metric == "error_rate" else ch - c
        worse = p < alpha and harm >= effect and harm > 0
        out.append(Comparison(metric, c, ch, harm, p, alpha, effect, worse))
    return tuple(out)


# -- the verdict ------------------------------------------------------------------------------------------------
def _over_limit(m: Mapping[str, Any], where: str, cfg: CanaryConfig) -> str | None:
    n, err, p95 = int(m["requests"]), float(m["error_rate"]), float(m["latency_p95_ms"])
    if err >= cfg.max_error_rate:
        return f"error rate {err:.3f} ≥ {cfg.max_error_rate} over {n} calls {where}"
    if p95 >= cfg.max_latency_p95_ms:
        return f"p95 latency {p95:.0f} ms ≥ {cfg.max_latency_p95_ms:.0f} ms over {n} calls {where}"
    return None


def judge(
    canary: Mapping[str, Any],
    champion: Mapping[str, Any],
    age_hours: float,
    cfg: CanaryConfig,
    ramp: RampPosition | None = None,
) -> CanaryVerdict:
    """Judge a canary from its and the champion's live metrics (module docstring: the rules, in order).

    Args:
        canary: The canary's metrics since it was deployed (at least ``requests``, ``error_rate``,
            ``latency_p95_ms``; the comparisons also read ``errors``, ``task_successes`` and the ratings).
        champion: The champion's metrics over the same window; empty when there is no champion (then only the
            hard limits apply).
        age_hours: How long the canary has served.
        cfg: Limits, ramp and statistics settings.
        ramp: Where the canary is on its ramp; None for a one-step canary judged over its whole age, which
            is promoted after ``duration_hours`` (the behaviour before ramps).

    Returns:
        The verdict. ``ramp`` carries the next share in ``traffic_percent``.
    """
    steps = cfg.ramp_percent
    if ramp is None:
        step, step_age, step_m, step_hours = len(steps) - 1, age_hours, canary, cfg.duration_hours
    else:
        step, step_age, step_m = min(max(ramp.step, 0), len(steps) - 1), ramp.step_age_hours, ramp.step_metrics
        step_hours = cfg.duration_hours / len(steps)
    at = f"step {step + 1}/{len(steps)} at {steps[step]} %"

    def verdict(
        action: Action, reason: str, percent: int | None = None, comps: tuple[Comparison, ...] = ()
    ) -> CanaryVerdict:
        return CanaryVerdict(action, reason, step, percent, comps)

    n = int(canary.get("requests", 0))
    if n < cfg.min_requests:
        return verdict("hold", f"{n} canary calls so far, {cfg.min_requests} needed to judge ({at})")
    broken = _over_limit(canary, f"since deployment ({at})", cfg)
    if broken is None and int(step_m.get("requests", 0)) >= cfg.min_requests:
        broken = _over_limit(step_m, f"in {at}", cfg)
    if broken:
        return verdict("rollback", broken, 0)
    comps: tuple[Comparison, ...] = ()
    if champion:
        n_champion = int(champion.get("requests", 0))
        if n_champion < cfg.min_requests:
            return verdict("hold", f"the champion has {n_champion} calls in the canary's window, "
                                   f"{cfg.min_requests} needed to compare ({at})")  # fmt: skip
        comps = compare(canary, champion, cfg)
        worse = [c.describe() for c in comps if c.worse]
        if worse:
            return verdict("rollback", f"over {n} canary and {n_champion} champion calls: " + "; ".join(worse), 0,
                           comps)  # fmt: skip
    health = (f"error rate {float(canary['error_rate']):.3f}, p95 {float(canary['latency_p95_ms']):.0f} ms"
              + ("" if champion else ", no champion to compare") + f" over {n} calls")  # fmt: skip
    n_step = int(step_m.get("requests", 0))
    if n_step < cfg.min_requests:
        return verdict("hold", f"healthy ({health}); {at} has {n_step} calls, {cfg.min_requests} needed", None, comps)
    if step_age < step_hours:
        return verdict("hold", f"healthy ({health}); {at} for {_span(step_age)} of {_span(step_hours)}", None, comps)
    if step + 1 < len(steps):
        return verdict("ramp", f"healthy ({health}) through {at} ({_span(step_age)}, {n_step} calls): "
                               f"ramp to {steps[step + 1]} %", steps[step + 1], comps)  # fmt: skip
    return verdict("promote", f"healthy ({health}) for {_span(age_hours)}, {at} done", 100, comps)


def _span(hours: float) -> str:
    """A duration for a reason text: ``8.0 h``, ``12 min`` or ``40 s``."""
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.0f} min" if hours >= 1 / 60 else f"{hours * 3600:.0f} s"
