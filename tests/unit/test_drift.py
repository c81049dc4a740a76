"""Simulator drift: new entities from the drift day on, which the served model gets wrong more often.

The first day stays what it always was (the eval sets and the other tests are built on it); from the drift day
on, about the configured share of the calls asks about new cities, a new sentiment phrasing, larger numbers
or a new support problem, and failures, low ratings and corrections gather on them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ftops_dev import drift
from ftops_dev.evalsets import labelled_rows
from ftops_dev.known_truth import expected_answer, is_drifted, is_right
from ftops_dev.simulate import generate_interactions, simulated_day
from ftops_dev.task_types import _NEGATIVE, _NEUTRAL, _POSITIVE, CITIES, TASKS, reference_response

ALL = tuple(TASKS)  # the free-text support_reply drifts too
N, DAYS, SHARE = 6000, 2, 0.3


@pytest.fixture(scope="module")
def plain() -> list[dict[str, Any]]:
    return generate_interactions(N, seed=11, task_types=ALL, days=DAYS)


@pytest.fixture(scope="module")
def drifted() -> list[dict[str, Any]]:
    return generate_interactions(N, seed=11, task_types=ALL, days=DAYS, drift_share=SHARE)


def _drifted(row: dict[str, Any]) -> bool:
    return is_drifted(row["task_type"], row["prompt"])


def _expected(row: dict[str, Any]) -> str:
    if row["metadata"]:
        return str(json.loads(row["metadata"])["expected"])
    found = expected_answer(row["task_type"], row["prompt"])
    assert found is not None, row["prompt"]
    return found


def _right(row: dict[str, Any]) -> bool:
    return row["success"] and is_right(row["task_type"], row["prompt"], row["response"])


def test_no_drift_by_default_and_the_first_day_is_unchanged(plain: list[dict], drifted: list[dict]) -> None:
    assert generate_interactions(N, seed=11, task_types=ALL, days=DAYS, drift_share=0.0) == plain
    day1 = [r for r in plain if simulated_day(r["timestamp"], days=DAYS) == 1]
    assert 0.4 < len(day1) / N < 0.6
    assert [r for r in drifted if simulated_day(r["timestamp"], days=DAYS) == 1] == day1
    assert not any(_drifted(r) for r in plain)
    # drift has random sources of its own: a row it leaves alone is the row it was, on every day
    assert [r["timestamp"] for r in drifted] == [r["timestamp"] for r in plain]
    changed = [(a, b) for a, b in zip(plain, drifted, strict=True) if a != b]
    assert changed and all(_drifted(b) for _, b in changed)


def test_drift_day_and_share_are_honoured(drifted: list[dict]) -> None:
    day2 = [r for r in drifted if simulated_day(r["timestamp"], days=DAYS) == 2]
    share = sum(map(_drifted, day2)) / len(day2)
    assert SHARE - 0.04 < share < SHARE + 0.04
    for task_type in ALL:  # every task type drifts
        rows = [r for r in day2 if r["task_type"] == task_type]
        assert SHARE - 0.07 < sum(map(_drifted, rows)) / len(rows) < SHARE + 0.07, task_type
    marked = [r for r in drifted if r["metadata"]]
    assert all(json.loads(r["metadata"]).get("drift", False) == _drifted(r) for r in marked)
    # from day 1 on, and never past the last day
    early = generate_interactions(2000, seed=2, days=DAYS, drift_share=0.5, drift_from_day=1)
    assert 0.4 < sum(map(_drifted, early)) / len(early) < 0.6
    assert generate_interactions(500, seed=2, days=DAYS, drift_share=0.5, drift_from_day=3) == generate_interactions(
        500, seed=2, days=DAYS
    )


def test_drifted_entities_are_new(drifted: list[dict]) -> None:
    assert len(set(drift.DRIFT_CITIES)) == len(drift.DRIFT_CITIES) == 20
    assert not {c.casefold() for c in drift.DRIFT_CITIES} & {c.casefold() for c in CITIES}
    assert all(c.isascii() and c.isalpha() and c[0].isupper() for c in drift.DRIFT_CITIES)
    old = [p.casefold() for p in _POSITIVE + _NEGATIVE + _NEUTRAL]
    new = [p.casefold() for p in drift.DRIFT_POSITIVE + drift.DRIFT_NEGATIVE + drift.DRIFT_NEUTRAL]
    everything = old + new
    # no phrase inside another: a prompt's label reads back one way
    assert not [(a, b) for a in new for b in everything if a != b and (a in b or b in a)]
    seen: Counter[str] = Counter()
    for r in drifted:
        if not _drifted(r):
            continue
        expected = _expected(r)
        seen[r["task_type"]] += 1
        if r["task_type"] == "city_extraction":
            assert expected in drift.DRIFT_CITIES
        elif r["task_type"] == "unit_conversion":
            assert int(expected) >= 1_000_000 and int(expected) % 1000 == 0
        elif r["task_type"] == "support_reply":
            assert expected.startswith(f"{drift.DRIFT_SUPPORT_ACTION}|")
        else:
            assert not any(p in r["prompt"].casefold() for p in old)
    assert set(seen) == set(ALL)
    cities = {_expected(r) for r in drifted if r["task_type"] == "city_extraction" and _drifted(r)}
    assert cities == set(drift.DRIFT_CITIES)


def _rates(rows: list[dict]) -> dict[str, float]:
    rated = [r for r in rows if r["user_feedback"] is not None]
    return {
        "wrong": sum(not _right(r) for r in rows) / len(rows),
        "low_rated": sum(r["user_feedback"] <= 2 for r in rated) / len(rated),
        "corrected": sum(r["correction"] is not None for r in rows) / len(rows),
    }


def test_the_served_model_fails_on_drifted_entities(drifted: list[dict]) -> None:
    day2 = [r for r in drifted if simulated_day(r["timestamp"], days=DAYS) == 2]
    new = _rates([r for r in day2 if _drifted(r)])
    known = _rates([r for r in day2 if not _drifted(r)])
    assert new["wrong"] > 0.6 and known["wrong"] < 0.35
    assert new["low_rated"] > known["low_rated"] + 0.25
    assert new["corrected"] > 2 * known["corrected"]
    # a wrong city is one the model knows, never the right new one
    cities = [r for r in day2 if _drifted(r) and r["task_type"] == "city_extraction" and r["success"]]
    wrong = [r for r in cities if not _right(r) and r["response"].startswith("The city")]
    assert wrong and all(any(c in r["response"] for c in CITIES) for r in wrong)


def test_corrections_on_drifted_rows_are_the_right_answers(drifted: list[dict]) -> None:
    corrected = [r for r in drifted if _drifted(r) and r["correction"] is not None]
    assert len(corrected) > 100
    for r in corrected:
        assert r["correction"] == reference_response(r["task_type"], _expected(r))
        assert is_right(r["task_type"], r["prompt"], r["correction"])
        assert not _right(r)  # only wrong answers are corrected


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_correction_share_is_a_parameter(share: float) -> None:
    rows = generate_interactions(3000, seed=4, correction_share=share)
    wrong = [r for r in rows if not _right(r)]
    assert abs(sum(r["correction"] is not None for r in wrong) / len(wrong) - share) < 0.05


def test_bad_arguments_are_refused() -> None:
    for kwargs in ({"drift_share": 1.5}, {"drift_share": -0.1}, {"correction_share": 2.0}, {"drift_from_day": 0}):
        with pytest.raises(ValueError):
            generate_interactions(10, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drift_share"):
        labelled_rows("sentiment", drift_share=1.1)


@pytest.mark.parametrize("task_type", ALL)
def test_eval_sets_with_drift_cover_the_drifted_entities(task_type: str) -> None:
    plain = labelled_rows(task_type)
    rows = labelled_rows(task_type, drift_share=0.3)
    assert len(rows) == len(plain) and len({r["prompt"] for r in rows}) == len(rows)
    flags = [is_drifted(task_type, r["prompt"]) for r in rows]
    assert flags == [False] * 126 + [True] * 54  # the set without drift first, its first rows unchanged
    assert rows[:126] == plain[:126]
    for r in rows:
        assert r["reference"] == reference_response(task_type, expected_answer(task_type, r["prompt"]) or "?")
    if task_type == "city_extraction":
        assert {expected_answer(task_type, r["prompt"]) for r in rows[126:]} == set(drift.DRIFT_CITIES)
    if task_type == "sentiment":
        phrases = drift.DRIFT_POSITIVE + drift.DRIFT_NEGATIVE + drift.DRIFT_NEUTRAL
        assert all(any(p in r["prompt"] for r in rows[126:]) for p in phrases)


def test_cli_flags(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from ftops.cli import main

    url = f"sqlite:///{tmp_path / 'wh.db'}"
    assert main(["simulate", "--rows", "600", "--seed", "3", "--drift-share", "0.4", "--drift-from-day", "2",
                 "--correction-share", "0.5", "--warehouse-url", url]) == 0  # fmt: skip
    with sa.create_engine(url).connect() as conn:
        got = conn.execute(sa.text("SELECT task_type, prompt, correction FROM interactions")).all()
    expected = generate_interactions(600, seed=3, drift_share=0.4, drift_from_day=2, correction_share=0.5)
    assert sorted(tuple(r) for r in got) == sorted((r["task_type"], r["prompt"], r["correction"]) for r in expected)
    assert any(is_drifted(t, p) for t, p, _ in got)
    out = tmp_path / "evalsets"
    assert main(["simulate-evalset", "--out", str(out), "--task-types", "city_extraction", "--drift-share", "0.3"]) == 0
    lines = [json.loads(line) for line in (out / "city_extraction.jsonl").read_text().splitlines()]
    assert sum(is_drifted("city_extraction", r["prompt"]) for r in lines) == 54


def test_simulated_traffic_drifts_too() -> None:
    from ftops_dev.traffic import make_calls

    plain = make_calls(2000, seed=5, task_types=ALL)
    assert make_calls(2000, seed=5, task_types=ALL, drift_share=0.0) == plain
    calls = make_calls(2000, seed=5, task_types=ALL, drift_share=SHARE)
    flags = [is_drifted(t, p) for t, _, p, _ in calls]
    assert SHARE - 0.04 < sum(flags) / len(calls) < SHARE + 0.04 and not any(is_drifted(t, p) for t, _, p, _ in plain)
    assert [c for c, f in zip(calls, flags, strict=True) if not f] == [c for c, f in zip(plain, flags, strict=True) if not f]
    for t, _, p, reference in calls:
        assert reference == reference_response(t, expected_answer(t, p) or "?")
