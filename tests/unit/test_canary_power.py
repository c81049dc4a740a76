"""Promotion needs evidence of "not worse", and latency is judged against the champion (issue 19, items 4 and 9).

Table-driven over the cases of the issue, with the shipped defaults and with the small sample the shipped
config asked for before (20 calls), so the confidence bound itself, not only the sample size, is what holds.
"""

import math

import pytest
import scipy.stats as stats  # installed with scikit-learn (sentence-transformers)

from ftops.core.config import CanaryConfig
from ftops.core.stats import difference_upper_bound, normal_quantile, required_calls, wilson_interval
from ftops.deployment.canary import RampPosition, judge
from tests.unit.test_canary_judge import metrics

CFG = CanaryConfig()  # min_effect 0.02, significance 0.05, power 0.8: min_requests derived (3 532)
SMALL = CanaryConfig(min_requests=20)  # the old shipped sample, same effects
WIDE = CanaryConfig(min_effect=0.05)  # min_requests derived again (566)
DONE = 24.0  # hours: every step's time is over, so only the evidence decides


def rates(n: int, success: float, errors: int = 0, p95: float = 300.0) -> dict:
    return metrics(n, errors=errors, successes=round(success * n), p95=p95)


def decide(canary: dict, champion: dict, cfg: CanaryConfig) -> str:
    return judge(canary, champion, DONE, cfg).action


# -- the statistics against textbook values -------------------------------------------------------------------
def test_normal_quantile_wilson_and_newcombe_match_published_values() -> None:
    for p in (1e-9, 0.001, 0.0125, 0.025, 0.2, 0.5, 0.8, 0.975, 0.9999):
        assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), abs=1e-12)
    z = normal_quantile(0.975)
    # Newcombe (1998), Statistics in Medicine 17:857, 81/263: Wilson 0.2553 to 0.3662
    assert wilson_interval(81, 263, z) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 20, z) == pytest.approx((0.0, 0.1611), abs=1e-4)  # not [0, 0] as Wald says
    # Newcombe (1998), Statistics in Medicine 17:873, 56/70 - 48/80: hybrid score (method 10) 0.0524 to 0.3339
    assert difference_upper_bound(56, 70, 48, 80, z) == pytest.approx(0.3339, abs=1e-4)
    assert -difference_upper_bound(48, 80, 56, 70, z) == pytest.approx(0.0524, abs=1e-4)
    assert difference_upper_bound(1, 0, 5, 10, z) == 1.0


def test_the_default_minimum_sample_is_the_power_calculation() -> None:
    def formula(p: float, effect: float, alpha: float, power: float) -> int:
        return math.ceil((stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) ** 2 * 2 * p * (1 - p) / effect**2)

    assert required_calls(0.9, 0.02, 0.025, 0.8) == formula(0.9, 0.02, 0.025, 0.8) == 3532
    assert CFG.min_requests == 3532 and WIDE.min_requests == formula(0.9, 0.05, 0.025, 0.8) == 566
    assert CanaryConfig(power=0.9, expected_success_rate=0.8).min_requests == formula(0.8, 0.02, 0.025, 0.9)
    assert CanaryConfig(min_requests=20, min_effect=0.05).min_requests == 20  # set: kept as it is
    with pytest.raises(ValueError):
        required_calls(0.9, 0.0, 0.025, 0.8)


# -- Must show 4: the verdict table ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [CFG, SMALL, WIDE], ids=["default", "min_requests=20", "min_effect=0.05"])
def test_a_clearly_worse_canary_is_never_promoted(cfg: CanaryConfig) -> None:
    # 0.767 (46/60) vs 0.850 (510/600): p = 0.046 > 0.025, so not "significantly worse"; promoted before.
    canary, champion = metrics(60, successes=46), metrics(600, successes=510)
    v = judge(canary, champion, DONE, cfg)
    success = next(c for c in v.comparisons if c.metric == "task_success_rate")
    assert success.p_value == pytest.approx(0.046, abs=0.001) and not success.worse
    assert v.action == "hold", v.reason
    assert success.upper > 0.083 and not success.not_worse and success.needed is None  # harm 0.083 ≥ min effect
    assert "more calls will not show 'not worse'" in v.reason or "needed to ramp or promote" in v.reason
    # 0.70 vs 0.90: rolled back once the sample shows it, held before, never promoted
    for n, champion_n, expected in [(10, 10, "hold"), (20, 20, "hold"), (20, 200, "rollback"), (60, 600, "rollback"),
                                    (600, 600, "rollback")]:  # fmt: skip
        action = decide(rates(n, 0.70), rates(champion_n, 0.90), cfg)
        assert action == expected, (n, champion_n, action)


@pytest.mark.parametrize(("cfg", "n_star"), [(CFG, 3532), (WIDE, 566)], ids=["min_effect=0.02", "min_effect=0.05"])
def test_an_equal_canary_is_promoted_once_the_sample_reaches_the_computed_size(cfg: CanaryConfig, n_star: int) -> None:
    assert cfg.min_requests == n_star
    for n in (20, 200, 2000, n_star - 1, n_star, 20_000):
        action = decide(rates(n, 0.9), rates(n, 0.9), cfg)
        assert action == ("promote" if n >= n_star else "hold"), (n, action)
    v = judge(rates(n_star - 1, 0.9), rates(n_star - 1, 0.9), DONE, cfg)
    assert f"{n_star - 1} canary calls, {n_star} needed to ramp or promote" in v.reason
    # the bound, not only the count: with the minimum lowered, equal rates still hold until the bound is under
    # min_effect, and the reason says about how many calls that takes
    low = cfg.model_copy(update={"min_requests": 20})
    v = judge(rates(200, 0.9), rates(200, 0.9), DONE, low)
    assert v.action == "hold" and "not yet shown not worse" in v.reason
    needed = next(c.needed for c in v.comparisons if c.metric == "task_success_rate")
    z = normal_quantile(1 - 0.025)
    assert needed is not None and 0.9 * z**2 * 0.18 / cfg.min_effect**2 < needed < 1.2 * z**2 * 0.18 / cfg.min_effect**2
    assert f"about {needed} canary calls needed at these values (200 so far)" in v.reason
    assert decide(rates(needed + needed // 10, 0.9), rates(needed + needed // 10, 0.9), low) == "promote"


@pytest.mark.parametrize("cfg", [CFG, SMALL, WIDE], ids=["default", "min_requests=20", "min_effect=0.05"])
def test_worse_by_the_minimum_effect_never_promotes_at_any_sample(cfg: CanaryConfig) -> None:
    seen = set()
    for n in (20, 60, 200, 600, 2000, 6000, 20_000, 200_000):
        for canary, champion in [(rates(n, 0.90 - cfg.min_effect), rates(n, 0.90)),  # task success down
                                 (rates(n, 1.0, errors=round(n * cfg.min_effect)), rates(n, 1.0)),  # errors up
                                 (rates(n, 0.90 - cfg.min_effect), rates(9 * n, 0.90))]:  # at a 10 % share
            action = decide(canary, champion, cfg)
            assert action in ("hold", "rollback"), (n, action)
            seen.add(action)
    assert seen == {"hold", "rollback"}  # held on small samples, rolled back once significant
    # exactly min_effect worse on a large sample is significant and large enough: rolled back (not held on a float)
    assert decide(rates(20_000, 0.88), rates(20_000, 0.90), CFG) == "rollback"


# -- Must show 5: latency against the champion ----------------------------------------------------------------
def test_a_slow_service_holds_but_a_slow_canary_is_rolled_back() -> None:
    both_slow = judge(rates(600, 0.9, p95=2600), rates(600, 0.9, p95=2500), DONE, WIDE)
    assert both_slow.action == "hold", both_slow.reason
    assert "p95 latency 2600 ms ≥ 2000 ms" in both_slow.reason and "the service is slow, not the canary" in both_slow.reason
    # the same within a ramp step: the step's champion calls are the reference
    window = rates(600, 0.9)
    step = RampPosition(1, 8, rates(300, 0.9, p95=2400), rates(300, 0.9, p95=2300))
    assert judge(window, rates(600, 0.9), DONE, WIDE, step).action in ("hold", "ramp")
    assert judge(window, rates(600, 0.9), DONE, WIDE, step).action == "hold"
    fast = RampPosition(1, 8, rates(600, 0.9, p95=280), rates(600, 0.9, p95=300))
    assert judge(window, rates(600, 0.9), DONE, WIDE, fast).action == "ramp"
    # 3× slower than the champion: rolled back, whether or not the absolute limit is reached
    for champion_p95 in (300.0, 1000.0):
        v = judge(rates(600, 0.9, p95=3 * champion_p95), rates(600, 0.9, p95=champion_p95), DONE, WIDE)
        assert v.action == "rollback" and v.traffic_percent == 0, v.reason
        assert f"champion's {champion_p95:.0f} ms" in v.reason
    step = RampPosition(1, 8, rates(300, 0.9, p95=900), rates(300, 0.9, p95=300))
    assert judge(window, rates(600, 0.9), DONE, WIDE, step).action == "rollback"
    # over the limit alone, the champion under it: rolled back; within ratio and margin and under: fine
    assert judge(rates(600, 0.9, p95=2100), rates(600, 0.9, p95=1900), DONE, WIDE).action == "rollback"
    assert judge(rates(600, 0.9, p95=390), rates(600, 0.9, p95=200), DONE, WIDE).action == "promote"  # + 190 ms
    assert judge(rates(600, 0.9, p95=1400), rates(600, 0.9, p95=1000), DONE, WIDE).action == "promote"  # × 1.4
    # a p95 of a few dozen calls is mostly noise: the ratio and margin apply from 100 calls a side in the span
    # (a serving-loop run under a CPU burner saw 934 ms against 612 ms over 43 and 37 calls of equal versions)
    small = RampPosition(1, 8, rates(43, 0.9, p95=934), rates(37, 0.9, p95=612))
    v = judge(window, rates(600, 0.9), DONE, WIDE, small)
    assert v.action == "hold" and "latency" not in v.reason, v.reason  # held for its 43 step calls of 566
    assert judge(rates(99, 0.9, p95=934), rates(600, 0.9, p95=612), DONE, SMALL).action != "rollback"
    assert judge(rates(100, 0.9, p95=934), rates(600, 0.9, p95=612), DONE, SMALL).action == "rollback"
    # no champion at all: the absolute limit alone rolls back; a champion that served too little in the span
    # tells nothing about the service, so the limit holds
    assert judge(rates(600, 0.9, p95=2100), {}, DONE, WIDE).action == "rollback"
    assert judge(rates(600, 0.9, p95=2100), rates(5, 0.9, p95=2500), DONE, WIDE).action == "hold"


def test_a_100_percent_step_is_compared_only_where_both_served() -> None:
    # At 100 % the champion serves nothing new: a load spike in the step (3× the champion's p95 from the
    # earlier steps) holds; the window is compared on the canary's calls before the step, beside the champion.
    champion, before = rates(1800, 0.9, p95=600), rates(600, 0.9, p95=620)
    spike = rates(600, 0.9, p95=1800)
    window = rates(1200, 0.9, p95=1700)  # the spike dominates the canary's window p95
    v = judge(window, champion, DONE, WIDE, RampPosition(2, 8, spike, rates(0, 0.9, p95=0), before))
    assert v.action == "promote", v.reason  # under the absolute limit: healthy
    slow = rates(600, 0.9, p95=2400)
    v = judge(window, champion, DONE, WIDE, RampPosition(2, 8, slow, rates(0, 0.9, p95=0), before))
    assert v.action == "hold" and "nothing to tell the service from the canary" in v.reason, v.reason
    # a canary that was already slower than the champion while both served is still rolled back
    v = judge(window, champion, DONE, WIDE, RampPosition(2, 8, spike, rates(0, 0.9, p95=0), rates(600, 0.9, p95=1900)))
    assert v.action == "rollback" and "since deployment" in v.reason, v.reason
