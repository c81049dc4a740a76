"""Canary judgement: hold, ramp, promote or roll back a canary from what its users saw, next to the champion.

The judge is a pure function of live metrics (see :func:`ftops.warehouse.state.live_metrics`): the canary's
and the champion's over the same window (since the canary was deployed), and both over the canary's current
ramp step. In order:

1. **Too few calls to judge.** Fewer than ``min_rollback_requests`` canary calls (capped at ``min_requests``):
   ``hold``.
2. **Hard limits**, in the window and (once it has ``min_rollback_requests`` calls) in the current step, so a
   breakage that comes with a larger share is not diluted by the earlier, smaller one: error rate ≥
   ``max_error_rate``: ``rollback``. Latency is judged against the champion's p95 over the same span (window
   or step): canary p95 > max(champion × ``max_latency_ratio``, champion + ``latency_margin_ms``), with
   ``LATENCY_MIN_CALLS`` (100) calls a side in the span: ``rollback``;
   canary p95 ≥ ``max_latency_p95_ms``: ``rollback`` when the champion's is under it, ``hold`` when the
   champion is as slow (the service is slow, not the canary). Only spans both served are compared: in a
   step where the champion serves too little (100 %), the window is compared on the canary's calls before
   the step and the step's own p95 over the limit holds. With no champion at all the limit rolls back.
3. **Significantly worse than the champion** (needs ``min_rollback_requests`` champion calls in the window;
   with fewer, ``hold``). Each comparison is one-sided (only harm matters) and counts only when it is both
   significant and at least the configured minimum effect:

   * error rate, and task success (a call that succeeded and, where rated, was rated ``success_min_rating``
     or higher, over all calls): pooled two-proportion z-test, effect ≥ ``min_effect`` (absolute);
   * user rating (only when both have ``min_rated`` rated calls; otherwise it is not compared and does not
     block: many products collect few ratings): Mann-Whitney U (normal approximation with tie and continuity
     corrections), effect = drop in mean rating ≥ ``min_rating_drop``.

   The family-wise ``significance`` is split evenly (Bonferroni) over the comparisons made in one review.
   Any one significantly worse: ``rollback``.
4. **Evidence of "not worse"** before any ramp or promotion: ``min_requests`` canary calls in the window, and
   for every comparison the one-sided upper confidence bound of the harm (at the same Bonferroni level;
   Newcombe's hybrid score interval for the two rates, a normal interval for the mean rating) below its
   minimum effect. Otherwise ``hold``, with about how many calls the bound needs at the observed rates.
5. **Ramp.** A step of ``ramp_percent`` lasts ``duration_hours / len(ramp_percent)`` and needs
   ``min_requests`` calls of its own: until then ``hold``; then ``ramp`` to the next share, or after the last
   step ``promote`` (so promotion comes no earlier than ``duration_hours``).

What this does not guard against, honestly: the canary is reviewed every 30 minutes and each review tests
again on data that includes the previous reviews', so the chance of ever rolling back (or of promoting) on
chance over a whole ramp is larger than one review's level (repeated looks). The z-test is an approximation
that is poor for very rare errors on small samples; the hard error-rate limit covers that case. At a 100 %
step the champion serves nothing new, so it is compared on its calls from the earlier steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ftops.core.config import CanaryConfig
from ftops.core.stats import difference_upper_bound, normal_quantile, normal_sf

Action = Literal["hold", "ramp", "promote", "rollback"]
# A p95 of n calls rests on the n/20 slowest: below 100 calls a side (5 calls) two equally fast versions differ
# by half again by chance under load, so the ratio and margin apply from 100 calls a side in the span compared.
LATENCY_MIN_CALLS = 100
# A harm of exactly min_effect counts as that large: 2400/20000 - 2000/20000 is 0.019999999999999997 in floats.
TOLERANCE = 1e-9


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
        upper: One-sided upper confidence bound (level ``alpha``) of the harm.
        not_worse: ``upper`` < ``min_effect``: the data rule out a harm of ``min_effect`` (needed to ramp or
            promote).
        needed: About how many canary calls (rated calls for the rating) would bring ``upper`` under
            ``min_effect`` at the observed values, the champion growing in proportion; None when it already is,
            or when the observed harm is ``min_effect`` or more (no sample size can show "not worse").
    """

    metric: str
    canary: float
    champion: float
    harm: float
    p_value: float
    alpha: float
    min_effect: float
    worse: bool
    upper: float = 0.0
    not_worse: bool = True
    needed: int | None = None

    def describe(self) -> str:
        verdict = "significantly worse" if self.worse else "not significantly worse"
        return (f"{self.metric} {self.canary:.3f} vs champion {self.champion:.3f}: {verdict} "
                f"(p={self.p_value:.2g}, alpha {self.alpha:.3g}, min effect {self.min_effect:g})")  # fmt: skip

    def shortfall(self, calls: int) -> str:
        """Why this comparison does not show "not worse" yet (``calls``: the canary's so far)."""
        bound = (f"{self.metric} {self.canary:.3f} vs champion {self.champion:.3f}: harm up to {self.upper:.3f} "
                 f"(upper bound, alpha {self.alpha:.3g}), not below min effect {self.min_effect:g}")  # fmt: skip
        if self.needed is None:
            return f"{bound}; the observed harm {self.harm:.3f} is that large: more calls will not show 'not worse'"
        unit = "rated calls" if self.metric == "mean_rating" else "calls"
        return f"{bound}; about {self.needed} canary {unit} needed at these values ({calls} so far)"


@dataclass(frozen=True)
class RampPosition:
    """Where a canary is on its ramp.

    Attributes:
        step: Index into ``ramp_percent`` (clamped to the last step).
        step_age_hours: How long the current step has run.
        step_metrics: The canary's live metrics since the current step began.
        champion_step_metrics: The champion's over the same span: the step's latency reference.
        canary_before_step: The canary's calls from deployment to the step's start, given when the champion
            served too few calls in the step (a 100 % step): the window's latency is compared on them.
    """

    step: int
    step_age_hours: float
    step_metrics: Mapping[str, Any]
    champion_step_metrics: Mapping[str, Any] | None = None
    canary_before_step: Mapping[str, Any] | None = None


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


def _mean_var(counts: Sequence[int]) -> tuple[float, float]:
    """Mean and sample variance of ratings 1, 2, ... given as counts per level."""
    n = sum(counts)
    mean = sum(i * c for i, c in enumerate(counts, 1)) / n
    var = sum(c * (i - mean) ** 2 for i, c in enumerate(counts, 1)) / max(n - 1, 1)
    return mean, var


def calls_needed(
    var_canary: float, var_champion: float, ratio: float, harm: float, min_effect: float, z: float
) -> int | None:
    """Canary calls for ``harm + z·sqrt(var_canary/n + var_champion/(ratio·n))`` to fall under ``min_effect``.

    Returns:
        The count (normal approximation, at the observed values); None when ``harm`` ≥ ``min_effect``.
    """
    if harm >= min_effect - TOLERANCE:
        return None
    return max(1, math.ceil(z * z * (var_canary + var_champion / ratio) / (min_effect - harm) ** 2))


def compare(canary: Mapping[str, Any], champion: Mapping[str, Any], cfg: CanaryConfig) -> tuple[Comparison, ...]:
    """Compare the canary with the champion, metric by metric: significantly worse (roll back), and shown not
    worse (the upper confidence bound of the harm under the minimum effect: may ramp or promote).

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
    z = normal_quantile(1 - alpha)
    e1, e2 = int(canary["errors"]), int(champion["errors"])
    s1, s2 = int(canary["task_successes"]), int(champion["task_successes"])

    def rate(metric: str, bad1: int, bad2: int) -> Comparison:
        # ``bad``: errors, or failed tasks; harm = canary's bad rate - champion's; pooled test, Newcombe bound
        harm, p = bad1 / n1 - bad2 / n2, proportion_worse_p(bad1, n1, bad2, n2)
        upper = difference_upper_bound(bad1, n1, bad2, n2, z)
        v1, v2 = ((b + z * z / 2) / (n + z * z) for b, n in ((bad1, n1), (bad2, n2)))  # Wilson centres: never 0
        needed = calls_needed(v1 * (1 - v1), v2 * (1 - v2), n2 / n1, harm, cfg.min_effect, z)
        c, ch = (e1 / n1, e2 / n2) if metric == "error_rate" else (s1 / n1, s2 / n2)
        worse = p < alpha and harm >= cfg.min_effect - TOLERANCE and harm > 0
        shown = upper < cfg.min_effect
        return Comparison(metric, c, ch, harm, p, alpha, cfg.min_effect, worse, upper, shown, None if shown else needed)

    out = [rate("error_rate", e1, e2), rate("task_success_rate", n1 - s1, n2 - s2)]
    if rate_ok:
        (m1, var1), (m2, var2) = _mean_var(canary["rating_counts"]), _mean_var(champion["rating_counts"])
        r1, r2 = int(canary["rated"]), int(champion["rated"])
        harm, effect = m2 - m1, cfg.min_rating_drop
        p = ratings_lower_p(canary["rating_counts"], champion["rating_counts"])
        upper = harm + z * math.sqrt(var1 / r1 + var2 / r2)
        needed = None if upper < effect else calls_needed(var1, var2, r2 / r1, harm, effect, z)
        worse = p < alpha and harm >= effect - TOLERANCE and harm > 0
        out.append(Comparison("mean_rating", m1, m2, harm, p, alpha, effect, worse, upper, upper < effect, needed))
    return tuple(out)


# -- the verdict ------------------------------------------------------------------------------------------------
def _error_limit(m: Mapping[str, Any], where: str, cfg: CanaryConfig) -> str | None:
    n, err = int(m["requests"]), float(m["error_rate"])
    if err >= cfg.max_error_rate:
        return f"error rate {err:.3f} ≥ {cfg.max_error_rate} over {n} calls {where}"
    return None


def latency_check(canary: Mapping[str, Any], champion: Mapping[str, Any] | None, where: str,
                  cfg: CanaryConfig) -> tuple[Literal["ok", "hold", "rollback"], str]:  # fmt: skip
    """The canary's p95 against the champion's over the same span (module docstring, rule 2).

    Args:
        canary: The canary's metrics over the span (``requests``, ``latency_p95_ms``).
        champion: The champion's over the same span; the ratio and margin apply once both sides have
            ``LATENCY_MIN_CALLS`` calls in it (a p95 of fewer is noise). None (no champion): the absolute limit rolls
            back. Fewer than ``min_rollback_requests`` calls (it served too little in the span, e.g. a 100 %
            step): nothing tells a slow service from a slow canary, so the absolute limit holds.
        where: Names the span in the reason.
        cfg: ``max_latency_ratio``, ``latency_margin_ms``, ``max_latency_p95_ms``.

    Returns:
        (``ok``, ``""``), or (``hold`` or ``rollback``, the reason).
    """
    n, p95, limit = int(canary["requests"]), float(canary["latency_p95_ms"]), cfg.max_latency_p95_ms
    if champion is None or int(champion.get("requests", 0)) < min_judge_requests(cfg):
        if p95 < limit:
            return "ok", ""
        if champion is None:
            return "rollback", f"p95 latency {p95:.0f} ms ≥ {limit:.0f} ms over {n} calls {where} (no champion)"
        return "hold", (f"p95 latency {p95:.0f} ms ≥ {limit:.0f} ms over {n} calls {where}, and the champion served "
                        f"{int(champion.get('requests', 0))} calls then: nothing to tell the service from the canary")
    ref = float(champion["latency_p95_ms"])
    bound = max(ref * cfg.max_latency_ratio, ref + cfg.latency_margin_ms)
    versus = f"the champion's {ref:.0f} ms over {int(champion['requests'])} calls"
    if p95 > bound and min(n, int(champion["requests"])) >= LATENCY_MIN_CALLS:
        return "rollback", (f"p95 latency {p95:.0f} ms > {bound:.0f} ms (max of ×{cfg.max_latency_ratio:g} and "
                            f"+{cfg.latency_margin_ms:.0f} ms on {versus}) over {n} calls {where}")  # fmt: skip
    if p95 >= limit and ref < limit:
        return "rollback", f"p95 latency {p95:.0f} ms ≥ {limit:.0f} ms over {n} calls {where}, {versus} is under it"
    if p95 >= limit:
        return "hold", (f"p95 latency {p95:.0f} ms ≥ {limit:.0f} ms over {n} calls {where}, but {versus} is too: "
                        "the service is slow, not the canary")  # fmt: skip
    return "ok", ""


def min_judge_requests(cfg: CanaryConfig) -> int:
    """Fewest calls (canary, and champion to compare) before anything is judged."""
    return min(cfg.min_rollback_requests, cfg.min_requests)


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
    champion_step: Mapping[str, Any] | None = None
    if ramp is None:
        step, step_age, step_m, step_hours = len(steps) - 1, age_hours, canary, cfg.duration_hours
    else:
        step, step_age, step_m = min(max(ramp.step, 0), len(steps) - 1), ramp.step_age_hours, ramp.step_metrics
        step_hours, champion_step = cfg.duration_hours / len(steps), ramp.champion_step_metrics
    at = f"step {step + 1}/{len(steps)} at {steps[step]} %"

    def verdict(
        action: Action, reason: str, percent: int | None = None, comps: tuple[Comparison, ...] = ()
    ) -> CanaryVerdict:
        return CanaryVerdict(action, reason, step, percent, comps)

    n, n_step, least = int(canary.get("requests", 0)), int(step_m.get("requests", 0)), min_judge_requests(cfg)
    if n < least:
        return verdict("hold", f"{n} canary calls so far, {least} needed to judge ({at})")
    slow: list[str] = []
    # Latency is compared only over spans both served: once the champion serves too little in the step (100 %),
    # the window's comparison uses the canary's calls before the step, and the step's has no reference.
    before = ramp.canary_before_step if ramp is not None else None
    spans = [(canary, before or canary, champion or None, f"since deployment ({at})")]
    if n_step >= least and step_m is not canary:
        spans.append((step_m, step_m, (champion_step or {}) if champion else None, f"in {at}"))
    for m, timed, reference, where in spans:
        broken = _error_limit(m, where, cfg)
        action, why = latency_check(timed, reference, where, cfg)
        if broken or action == "rollback":
            return verdict("rollback", broken or why, 0)
        if action == "hold":
            slow.append(why)
    comps: tuple[Comparison, ...] = ()
    if champion:
        n_champion = int(champion.get("requests", 0))
        if n_champion < least:
            return verdict("hold", f"the champion has {n_champion} calls in the canary's window, "
                                   f"{least} needed to compare ({at})")  # fmt: skip
        comps = compare(canary, champion, cfg)
        worse = [c.describe() for c in comps if c.worse]
        if worse:
            return verdict("rollback", f"over {n} canary and {n_champion} champion calls: " + "; ".join(worse), 0,
                           comps)  # fmt: skip
    if slow:
        return verdict("hold", "; ".join(slow) + f" ({at})", None, comps)
    if n < cfg.min_requests:
        return verdict("hold", f"healthy so far; {n} canary calls, {cfg.min_requests} needed to ramp "
                               f"or promote ({at})", None, comps)  # fmt: skip
    unproven = [c.shortfall(n) for c in comps if not c.not_worse]
    if unproven:
        return verdict("hold", f"not yet shown not worse ({at}): " + "; ".join(unproven), None, comps)
    health = (f"error rate {float(canary['error_rate']):.3f}, p95 {float(canary['latency_p95_ms']):.0f} ms"
              + ("" if champion else ", no champion to compare") + f" over {n} calls")  # fmt: skip
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
