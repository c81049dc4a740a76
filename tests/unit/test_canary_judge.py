"""The canary judge and its statistics: pure functions on metrics built in the test."""

import math
import random

import pytest
from pydantic import ValidationError

from ftops.core.config import CanaryConfig, FtopsConfig, load_config
from ftops.deployment.canary import RampPosition, judge, proportion_worse_p, ratings_lower_p

CFG = CanaryConfig()
# The sample the shipped config asked for before promotions needed evidence, with effects such samples can show.
SMALL = CanaryConfig(min_requests=20, min_effect=0.05)


def metrics(n: int, errors: int = 0, successes: int | None = None, ratings: list[int] | None = None,
            p95: float = 300.0) -> dict:  # fmt: skip
    """Live metrics as :func:`ftops.warehouse.state.live_metrics` returns them; ``ratings`` = counts of 1..5."""
    counts = ratings or [0, 0, 0, 0, 0]
    rated = sum(counts)
    successes = n - errors if successes is None else successes
    return {"requests": n, "errors": errors, "error_rate": errors / n if n else 0.0, "latency_p95_ms": p95,
            "rated": rated, "rating_counts": counts,
            "mean_rating": sum(i * c for i, c in enumerate(counts, 1)) / rated if rated else None,
            "task_successes": successes, "task_success_rate": successes / n if n else 0.0}  # fmt: skip


def at(step: int, hours: float, m: dict) -> RampPosition:
    return RampPosition(step=step, step_age_hours=hours, step_metrics=m)


# -- the statistics -----------------------------------------------------------------------------------------
def test_two_proportion_z_test_matches_the_textbook_value() -> None:
    # 30/60 failures vs 6/60: pooled 0.3, se = sqrt(0.3 * 0.7 * 2/60) = 0.0837, z = 0.4 / 0.0837 = 4.78
    p = proportion_worse_p(30, 60, 6, 60)
    z = 0.4 / math.sqrt(0.3 * 0.7 * 2 / 60)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert 1e-7 < p < 1e-5
    assert proportion_worse_p(6, 60, 30, 60) > 0.999  # one-sided: better is never "worse"
    assert proportion_worse_p(0, 60, 0, 600) == 1.0 and proportion_worse_p(3, 0, 0, 10) == 1.0


def test_mann_whitney_matches_scipy_on_tied_ordinal_ratings() -> None:
    import scipy.stats as stats  # installed with scikit-learn (sentence-transformers)
    rng = random.Random(7)
    for _ in range(20):
        a = [rng.choice([1, 2, 3, 4, 5, 5]) for _ in range(rng.randint(5, 80))]
        b = [rng.choice([2, 3, 4, 4, 5, 5]) for _ in range(rng.randint(5, 80))]
        counts = [[x.count(r) for r in range(1, 6)] for x in (a, b)]
        expected = stats.mannwhitneyu(a, b, alternative="less", method="asymptotic", use_continuity=True).pvalue
        assert ratings_lower_p(*counts) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ratings_lower_p([0, 0, 0, 0, 30], [0, 0, 0, 0, 40]) == 1.0  # every rating the same: nothing to test
    assert ratings_lower_p([0] * 5, [1] * 5) == 1.0


# -- the judge ----------------------------------------------------------------------------------------------
def test_a_tiny_difference_on_a_huge_sample_is_significant_but_below_the_minimum_effect() -> None:
    champion = metrics(20_000, errors=200, successes=18_000)
    canary = metrics(20_000, errors=200, successes=17_800)  # 0.89 vs 0.90: p ≈ 5e-4, harm 0.01 < 0.02
    v = judge(canary, champion, 8, CFG, at(0, 8, canary))
    success = next(c for c in v.comparisons if c.metric == "task_success_rate")
    assert success.p_value < success.alpha and success.harm == pytest.approx(0.01) and not success.worse
    assert v.action == "ramp" and v.traffic_percent == 50
    strict = CFG.model_copy(update={"min_effect": 0.005})
    assert judge(canary, champion, 8, strict, at(0, 8, canary)).action == "rollback"


def test_ratings_are_compared_only_with_enough_on_both_sides_and_never_block() -> None:
    champion = metrics(200, ratings=[0, 0, 0, 0, 50])
    # 19 one-star ratings, fewer than min_rated (20). (Task success is left at 100 % here, to test the rating
    # rule alone; live_metrics would count those calls as failed tasks.)
    few = metrics(200, ratings=[19, 0, 0, 0, 0])
    v = judge(few, champion, 9, SMALL, at(0, 9, few))
    assert [c.metric for c in v.comparisons] == ["error_rate", "task_success_rate"]
    assert v.comparisons[0].alpha == pytest.approx(0.025)  # Bonferroni over two comparisons
    assert v.action == "ramp"  # too few ratings to compare does not block the ramp
    enough = metrics(400, ratings=[20, 0, 0, 0, 0])
    champion = metrics(400, ratings=[0, 0, 0, 0, 50])
    v = judge(enough, champion, 9, SMALL, at(0, 9, enough))
    rating = next(c for c in v.comparisons if c.metric == "mean_rating")
    assert rating.worse and rating.harm == pytest.approx(4.0) and v.action == "rollback"
    assert "mean_rating 1.000 vs champion 5.000: significantly worse" in v.reason


def test_no_comparison_without_enough_champion_calls_but_hard_limits_still_apply() -> None:
    canary = metrics(100)
    v = judge(canary, metrics(5), 20, CFG, at(2, 8, canary))
    assert v.action == "hold" and "the champion has 5 calls" in v.reason
    broken = metrics(100, errors=10)
    assert judge(broken, metrics(5), 1, CFG, at(0, 1, broken)).action == "rollback"
    assert judge(canary, {}, 8, SMALL, at(2, 8, canary)).action == "promote"  # no champion at all: limits only
    assert judge(canary, {}, 8, CFG, at(2, 8, canary)).action == "hold"  # ... and min_requests


def test_a_breakage_in_the_current_step_is_not_diluted_by_earlier_steps() -> None:
    window = metrics(1000, errors=30)  # 3 % over the whole window: under the 5 % limit
    step = metrics(100, errors=20)  # 20 % since the step to 50 % began
    v = judge(window, metrics(2000, errors=60), 10, CFG, at(1, 2, step))
    assert v.action == "rollback" and "error rate 0.200" in v.reason and "in step 2/3 at 50 %" in v.reason
    assert v.traffic_percent == 0


def test_each_step_needs_its_time_and_its_own_minimum_sample() -> None:
    window, champion = metrics(500), metrics(2000)
    assert judge(window, champion, 20, SMALL, at(1, 9, metrics(19))).action == "hold"
    assert judge(window, champion, 20, SMALL, at(1, 7.9, metrics(100))).action == "hold"
    v = judge(window, champion, 20, SMALL, at(1, 8, metrics(100)))
    assert (v.action, v.step, v.traffic_percent) == ("ramp", 1, 100)
    v = judge(window, champion, 24, SMALL, at(2, 8, metrics(100)))
    assert (v.action, v.traffic_percent) == ("promote", 100)
    assert judge(window, champion, 24, SMALL, at(7, 8, metrics(100))).action == "promote"  # config shortened


# -- the configuration ----------------------------------------------------------------------------------------
def test_ramp_config_is_validated_and_traffic_percent_is_its_first_step() -> None:
    assert (CFG.ramp_percent, CFG.traffic_percent) == ((10, 50, 100), 10)
    shipped = load_config().canary
    assert shipped.ramp_percent == (10, 50, 100) and shipped.traffic_percent == 10
    assert CanaryConfig(traffic_percent=5).ramp_percent == (5,)  # an older config: one step, as before
    assert CanaryConfig(ramp_percent=[5, 25, 60]).traffic_percent == 5
    assert CanaryConfig(traffic_percent=5, ramp_percent=[5, 100]).ramp_percent == (5, 100)
    for bad, message in [([50, 10], "strictly ascending"), ([10, 10], "strictly ascending"), ([0, 10], "greater"),
                         ([10, 101], "less than or equal"), ([], "at least 1")]:  # fmt: skip
        with pytest.raises(ValidationError, match=message):
            CanaryConfig(ramp_percent=bad)
    with pytest.raises(ValidationError, match="traffic_percent \\(5\\) is the first ramp step \\(10\\)"):
        CanaryConfig(traffic_percent=5, ramp_percent=[10, 50])
    assert FtopsConfig.model_validate(FtopsConfig().model_dump(mode="json")).canary == CFG  # XCom snapshot
