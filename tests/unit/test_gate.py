"""The deployment gate: every criterion, each failing alone, the confidence bound and the cost ceiling."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from ftops.core.config import GateConfig
from ftops.deployment.gate import apply_gate

BASELINE = {"accuracy": 0.40, "perplexity": 10.0, "latency_p50_ms": 50.0, "cost_per_1k_tokens": 0.002, "n": 100}
GOOD = {**BASELINE, "accuracy": 0.60, "perplexity": 8.0, "latency_p50_ms": 60.0}
GOOD_CI = (0.20, 0.11, 0.29)
CEILING = GateConfig(max_cost_per_1k_tokens=0.01, min_accuracy=0.4)


def _failed(d: Any) -> list[str]:
    return [r for r in d.reasons if r.startswith("FAIL")]


def test_a_clear_improvement_passes_and_every_criterion_is_listed() -> None:
    d = apply_gate(GOOD, BASELINE, CEILING, GOOD_CI)
    assert d.passed and d.decision == "deploy" and d.as_dict()["decision"] == "deploy"
    assert len(d.reasons) == 7 and all(r.startswith("ok: ") for r in d.reasons)
    text = "\n".join(d.reasons)
    for words in ("test examples 100", "gain +0.200", "accuracy 0.600 (floor ≥ 0.400", "95% CI [+0.110, +0.290]", "perplexity 8.00 vs 10.00",
                  "p50 latency 60.0 ms vs 50.0 ms", "cost per 1 000 tokens 0.002 (ceiling 0.01)"):  # fmt: skip
        assert words in text


@pytest.mark.parametrize(
    ("change", "ci", "cfg", "words"),
    [
        ({"n": 19}, GOOD_CI, CEILING, "test examples 19 (need ≥ 20)"),
        ({}, GOOD_CI, CEILING.model_copy(update={"min_accuracy": 0.7}), "accuracy 0.600 (floor ≥ 0.700"),
        ({"accuracy": 0.44}, (0.04, 0.01, 0.07), CEILING, "gain +0.040 (need ≥ +0.050)"),
        ({}, (0.20, -0.01, 0.41), CEILING, "lower bound -0.010 (need > +0.000)"),
        ({"perplexity": 10.5}, GOOD_CI, CEILING, "perplexity 10.50 vs 10.00"),
        ({"latency_p50_ms": 250.0}, GOOD_CI, CEILING, "p50 latency 250.0 ms vs 50.0 ms"),
        ({"cost_per_1k_tokens": 0.02}, GOOD_CI, CEILING, "cost per 1 000 tokens 0.02 (ceiling 0.01)"),
    ],
    ids=["test size", "accuracy floor", "accuracy gain", "lower confidence bound", "perplexity", "latency", "cost ceiling"],
)
def test_each_criterion_failing_alone_archives_with_its_reason(
    change: dict[str, float], ci: tuple[float, float, float], cfg: GateConfig, words: str
) -> None:
    d = apply_gate({**GOOD, **change}, BASELINE, cfg, ci)
    assert not d.passed and d.decision == "archive"
    failed = _failed(d)
    assert len(failed) == 1, d.reasons
    assert words in failed[0]
    assert len(d.reasons) == 7  # the passed criteria are still listed


def test_the_lower_bound_must_be_strictly_above_the_threshold() -> None:
    assert not apply_gate(GOOD, BASELINE, CEILING, (0.20, 0.0, 0.4)).passed  # identical models give 0
    stricter = GateConfig(min_lower_bound_gain=0.05)
    assert apply_gate(GOOD, BASELINE, stricter, (0.20, 0.06, 0.34)).passed
    d = apply_gate(GOOD, BASELINE, stricter, (0.20, 0.05, 0.35))
    assert _failed(d) == [r for r in d.reasons if "lower bound +0.050 (need > +0.050)" in r]


def test_latency_rise_must_stay_under_the_limit() -> None:
    assert apply_gate({**GOOD, "latency_p50_ms": 249.9}, BASELINE, CEILING, GOOD_CI).passed
    assert not apply_gate({**GOOD, "latency_p50_ms": 250.0}, BASELINE, CEILING, GOOD_CI).passed


def test_no_cost_ceiling_by_default_and_the_reason_says_so() -> None:
    expensive = {**GOOD, "cost_per_1k_tokens": 1e6}
    d = apply_gate(expensive, BASELINE, GateConfig(), GOOD_CI)
    assert d.passed
    assert "ok: cost per 1 000 tokens 1e+06 (no ceiling configured)" in d.reasons


def test_an_unmeasured_cost_fails_a_ceiling_but_not_an_absent_one() -> None:
    unmeasured = {k: v for k, v in GOOD.items() if k != "cost_per_1k_tokens"}
    assert apply_gate(unmeasured, BASELINE, GateConfig(), GOOD_CI).passed
    d = apply_gate(unmeasured, BASELINE, CEILING, GOOD_CI)
    assert not d.passed and "cost per 1 000 tokens nan" in _failed(d)[0]


def test_a_nan_perplexity_fails() -> None:
    d = apply_gate({**GOOD, "perplexity": math.nan}, BASELINE, CEILING, GOOD_CI)
    assert len(_failed(d)) == 1 and "perplexity nan" in _failed(d)[0]


def test_without_an_interval_the_bound_criterion_is_left_out() -> None:
    d = apply_gate(GOOD, BASELINE, CEILING)
    assert d.passed and len(d.reasons) == 6 and not any("CI" in r for r in d.reasons)


def test_gate_config_defaults_and_ranges() -> None:
    cfg = GateConfig()
    assert (cfg.min_accuracy_gain, cfg.max_perplexity_increase, cfg.max_latency_increase_ms) == (0.05, 0.0, 200)
    assert (cfg.min_lower_bound_gain, cfg.confidence, cfg.bootstrap_resamples) == (0.0, 0.95, 2000)
    assert cfg.max_cost_per_1k_tokens is None and cfg.compute_cost_per_hour == 0.0
    for bad in ({"confidence": 1.0}, {"confidence": 0.0}, {"bootstrap_resamples": 10},
                {"max_cost_per_1k_tokens": -1}, {"compute_cost_per_hour": -0.1}):  # fmt: skip
        with pytest.raises(ValidationError):
            GateConfig(**bad)


def test_the_markdown_report_carries_the_interval_and_every_reason() -> None:
    from ftops.pipeline.finetune_eval import _markdown_table

    gain = {"diff": 0.2, "low": 0.11, "high": 0.29, "confidence": 0.95, "resamples": 2000,
            "method": "paired bootstrap, percentile"}  # fmt: skip
    d = apply_gate(GOOD, BASELINE, CEILING, GOOD_CI)
    table = _markdown_table(GOOD, BASELINE, "champion v1", gain, d.reasons)
    assert "| accuracy | 0.6 | 0.4 | +0.2 |" in table
    assert "+0.2000 [+0.1100, +0.2900]" in table and "95% CI" in table
    assert all(f"- {r}" in table for r in d.reasons)


def test_a_first_model_that_only_beats_the_untuned_base_is_held_by_the_floor() -> None:
    # measured in test_degraded: a model trained on shuffled replies scores 0.06 where the untuned base
    # scores 0.00; the gain's CI clears zero, so only the absolute floor of the shipped config stops it
    from ftops.core.config import load_config

    base = {**BASELINE, "accuracy": 0.0, "perplexity": 150.0}
    shuffled = {**GOOD, "accuracy": 0.06, "perplexity": 9.0}
    shipped = load_config().gate
    assert apply_gate(shuffled, base, shipped.model_copy(update={"min_accuracy": 0.0}), (0.06, 0.02, 0.11)).passed
    d = apply_gate(shuffled, base, shipped, (0.06, 0.02, 0.11))
    assert not d.passed and _failed(d) == [f"FAIL: accuracy 0.060 (floor ≥ {shipped.min_accuracy:.3f}, whatever "
                                           "the baseline)"]


# -- trivial baselines: a constant answer never ships ---------------------------------------------------
def test_a_model_that_always_gives_the_most_common_reply_is_archived_even_against_a_base_model_of_zero() -> None:
    """The demo's failure: a sentiment "champion" that says "negative" to every review, compared only with an
    untuned base model that scores 0. Scored on real simulator data with the real metrics and bootstrap."""
    from ftops_dev.simulate import clean_chat_rows

    from ftops.core.chat import split_conversation
    from ftops.deployment.gate import TrivialComparison
    from ftops.evaluation.baselines import best_trivial, trivial_baselines
    from ftops.evaluation.metrics import paired_bootstrap, score_answers

    rows = clean_chat_rows("sentiment", 300, seed=3)
    train, test = rows[:240], rows[240:]
    trivial = best_trivial(trivial_baselines(train, test))
    assert trivial is not None and trivial.name == "majority label"  # three templates: label-like
    assert trivial.answer.startswith("Sentiment: ") and 0.2 < trivial.accuracy < 0.6
    references = [split_conversation(r["messages"])[1] for r in test]
    scores, constant_correct = score_answers([trivial.answer] * len(test), references)  # the constant model
    base_scores, base_correct = score_answers(["I do not know."] * len(test), references)  # an untuned base
    assert base_scores["accuracy"] == 0 and constant_correct == trivial.correct
    candidate = {**BASELINE, "accuracy": scores["accuracy"], "n": len(test)}
    baseline = {**BASELINE, "accuracy": 0.0, "n": len(test)}
    versus = TrivialComparison(f'{trivial.name} "{trivial.answer[:20]}"', trivial.accuracy,
                               paired_bootstrap(constant_correct, trivial.correct, seed=0))  # fmt: skip
    d = apply_gate(candidate, baseline, GateConfig(), paired_bootstrap(constant_correct, base_correct, seed=0), trivial=versus)
    assert not d.passed and d.decision == "archive"
    (failed,) = _failed(d)  # it beats the base model by a mile; only the trivial baseline stops it
    assert "trivial baseline majority label" in failed and "need lower bound > 0" in failed


def test_a_model_that_beats_the_trivial_baseline_clearly_passes_that_criterion() -> None:
    from ftops.deployment.gate import TrivialComparison

    d = apply_gate(GOOD, BASELINE, CEILING, GOOD_CI, trivial=TrivialComparison('majority label "x"', 0.3, (0.3, 0.2, 0.4)))
    assert d.passed and any("trivial baseline majority label" in r and r.startswith("ok") for r in d.reasons)


def test_trivial_baselines_of_free_text_are_the_most_common_reply() -> None:
    from ftops.evaluation.baselines import is_label_like, trivial_baselines

    def conv(prompt: str, reply: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}

    train = [conv(f"q{i}", f"answer number {i}") for i in range(100)] + [conv("r", "Paris.")] * 3
    test = [conv("a", "paris"), conv("b", "answer number 7"), conv("c", "Rome")]
    (trivial,) = trivial_baselines(train, test)
    assert trivial.name == "most common training reply" and trivial.answer == "Paris."
    assert trivial.correct == [True, False, False] and trivial.accuracy == pytest.approx(1 / 3)
    assert not is_label_like([f"answer {i}" for i in range(100)]) and is_label_like(["yes", "no"] * 50)
    assert trivial_baselines([], test) == []


def test_the_yardstick_is_the_first_line_and_never_decides() -> None:
    line = "evalset/city_extraction/v2 (180 rows, references no served model wrote)"
    d = apply_gate(GOOD, BASELINE, CEILING, GOOD_CI, yardstick=line)
    assert d.passed and d.reasons[0] == f"ok: yardstick {line}" and len(d.reasons) == 8
    worse = apply_gate({**GOOD, "accuracy": 0.30}, BASELINE, CEILING, GOOD_CI, yardstick=line)
    assert not worse.passed and worse.reasons[0].startswith("ok: yardstick") and _failed(worse)


# -- the replacement gate: a local candidate against an upstream champion (issue 22) ---------------------------
UPSTREAM = {"accuracy": 0.90, "perplexity": math.nan, "latency_p50_ms": 700.0, "latency_p95_ms": 1500.0,
            "cost_per_1k_calls": 1.0, "cost_per_1k_tokens": math.nan, "n": 100}  # fmt: skip
STUDENT = {"accuracy": 0.89, "perplexity": 3.0, "latency_p50_ms": 90.0, "latency_p95_ms": 400.0,
           "cost_per_1k_calls": 0.1, "cost_per_1k_tokens": 0.01, "n": 100}  # fmt: skip
PRICED = GateConfig(compute_cost_per_hour=0.5)


def test_a_student_not_worse_within_the_margin_and_cheaper_replaces_an_upstream_champion() -> None:
    d = apply_gate(STUDENT, UPSTREAM, PRICED, (-0.01, -0.015, 0.0), replacing="gpt-4o")
    assert d.passed, d.reasons
    text = "\n".join(d.reasons)
    # no +0.05 gain is asked, perplexity and p50 are not compared with an API model
    assert "need ≥ +0.050" not in text and "p50" not in text and "perplexity not compared" in text
    for words in ("accuracy not worse than upstream gpt-4o: 0.890 vs 0.900", "need > -0.02, gate.replace_margin",
                  "cost per 1 000 calls 0.1 vs upstream gpt-4o 1: saving 90.0% (need ≥ 50%", "p95 latency 400 ms"):
        assert words in text


@pytest.mark.parametrize(("change", "ci", "cfg", "failed"), [
    ({}, (-0.03, -0.025, 0.0), PRICED, "accuracy not worse than upstream gpt-4o"),         # worse beyond the margin
    ({"cost_per_1k_calls": 0.6}, (0.0, -0.01, 0.01), PRICED, "saving 40.0% (need ≥ 50%"),   # not cheap enough
    ({}, (0.0, -0.01, 0.01), GateConfig(), "gate.compute_cost_per_hour is 0"),             # unpriced compute
    ({"latency_p95_ms": 2500.0}, (0.0, -0.01, 0.01), PRICED, "p95 latency 2500 ms (need < 2000 ms"),
    ({"latency_p95_ms": math.nan}, (0.0, -0.01, 0.01), PRICED, "p95 latency nan ms"),        # not measured
])  # fmt: skip
def test_the_replacement_gate_fails_each_criterion_alone(
    change: dict[str, float], ci: tuple[float, float, float], cfg: GateConfig, failed: str
) -> None:
    d = apply_gate({**STUDENT, **change}, UPSTREAM, cfg, ci, replacing="gpt-4o")
    assert not d.passed
    [line] = _failed(d)
    assert failed in line, line


def test_an_upstream_champion_without_prices_fails_the_saving_with_the_reason() -> None:
    d = apply_gate(STUDENT, {**UPSTREAM, "cost_per_1k_calls": math.nan}, PRICED, (0.0, -0.01, 0.01), replacing="x")
    assert _failed(d) == ["FAIL: cost per 1 000 calls of upstream x not measured (its version has no "
                                       "prices, or its API reported no token usage): no saving can be shown"]


def test_a_judged_replacement_is_held_to_the_margin_not_to_a_win() -> None:
    from ftops.core.config import JudgeConfig
    from ftops.deployment.gate import judge_criteria
    from ftops.evaluation.judge_calibration import JudgeCalibration

    cal = JudgeCalibration(model="j", evalset="evalset/t/v1", kappa=0.9, accuracy=0.95, pairs=100, ties=0,
                           unparseable=0, calibrated_at="2026-12-07")  # fmt: skip
    result = type("R", (), {"net_win": -0.005, "net_win_ci": (-0.015, 0.005), "wins": 10, "ties": 80, "losses": 10,
                            "n": 100, "win_rate": 0.1, "unparseable": 0, "confidence": 0.95})()  # fmt: skip
    lines = judge_criteria(result, cal, JudgeConfig(model="j"), "t")  # type: ignore[arg-type]
    assert lines[-1].startswith("FAIL") and "(need > 0)" in lines[-1]
    lines = judge_criteria(result, cal, JudgeConfig(model="j"), "t", margin=0.02)  # type: ignore[arg-type]
    assert lines[-1].startswith("ok") and "need > -0.02, not worse" in lines[-1]
