"""The workload simulator: deterministic, well-typed, and as messy as promised."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime

import pytest
from ftops_dev.simulate import GAMER_USER_ID, generate_interactions
from ftops_dev.task_types import CITIES, SENTIMENT_LABELS, TASK_TYPES, reference_response

KEYS = {
    "id", "timestamp", "task_type", "prompt", "response", "model_version", "user_id", "user_feedback",
    "success", "confidence", "latency_ms", "tokens_used", "metadata", "correction",
}  # fmt: skip
N = 4000


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate_interactions(N, seed=3)


def _expected(row: dict) -> str | None:
    return json.loads(row["metadata"])["expected"] if row["metadata"] else None


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert generate_interactions(300, seed=1) == generate_interactions(300, seed=1)
    assert generate_interactions(300, seed=1) != generate_interactions(300, seed=2)


def test_keys_and_types(rows: list[dict]) -> None:
    assert len(rows) == N
    assert len({r["id"] for r in rows}) == N
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for r in rows:
        assert set(r) == KEYS
        assert r["timestamp"].tzinfo is not None and r["timestamp"] < start
        assert r["task_type"] in TASK_TYPES
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        assert isinstance(r["response"], str)
        assert r["model_version"] == "base"
        assert r["user_id"] is None or isinstance(r["user_id"], str)
        assert r["user_feedback"] is None or r["user_feedback"] in {1, 2, 3, 4, 5}
        assert isinstance(r["success"], bool)
        assert r["confidence"] is None or 0.0 <= r["confidence"] <= 1.0
        assert isinstance(r["latency_ms"], int) and r["latency_ms"] > 0
        assert isinstance(r["tokens_used"], int) and r["tokens_used"] > 0
        assert r["metadata"] is None or isinstance(json.loads(r["metadata"]), dict)
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)


def test_arguments_are_honoured() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = generate_interactions(200, seed=0, start=start, task_types=["unit_conversion"], model_version="v7")
    assert {r["task_type"] for r in rows} == {"unit_conversion"}
    assert {r["model_version"] for r in rows} == {"v7"}
    assert all(r["timestamp"] < start for r in rows)
    with pytest.raises(ValueError):
        generate_interactions(10, task_types=["poetry"])


def test_reference_templates() -> None:
    assert reference_response("unit_conversion", "7000") == "7 km equals 7000 metres, because 1 km is 1000 metres."
    assert reference_response("city_extraction", "Oslo").count("Oslo") == 2
    for label in SENTIMENT_LABELS:
        assert f"Sentiment: {label}." in reference_response("sentiment", label)
    shortest = min(
        [reference_response("sentiment", s) for s in SENTIMENT_LABELS]
        + [reference_response("city_extraction", c) for c in CITIES]
        + [reference_response("unit_conversion", "1000")],
        key=len,
    )
    assert len(shortest) >= 50


def test_answers_are_checkable(rows: list[dict]) -> None:
    for r in rows:
        expected = _expected(r)
        if expected is None:
            continue
        if r["task_type"] == "city_extraction":
            assert expected in CITIES and expected.lower() in r["prompt"].lower()
        elif r["task_type"] == "unit_conversion":
            km = int(expected) // 1000
            assert int(expected) == km * 1000 and 1 <= km <= 999 and str(km) in r["prompt"]
        else:
            assert expected in SENTIMENT_LABELS


def test_production_model_is_right_about_three_in_four(rows: list[dict]) -> None:
    served = [r for r in rows if r["success"] and _expected(r) is not None and len(r["response"]) >= 50]
    correct = [r for r in served if r["response"] == reference_response(r["task_type"], _expected(r))]
    assert 0.68 < len(correct) / len(served) < 0.82
    for r in correct:
        assert len(r["response"]) >= 50
    # a wrong answer keeps the template and changes only the slot (refusals are logged as successes too)
    wrong = [r for r in served if r not in correct and not r["response"].startswith("I")]
    assert all(r["response"].startswith(("Sentiment:", "The city mentioned", f"{_expected(r)[:-3]} km")) for r in wrong)


def test_some_wrong_answers_get_a_correction_and_no_right_one_does(rows: list[dict]) -> None:
    known = [r for r in rows if _expected(r) is not None]
    right = [r for r in known if r["response"] == reference_response(r["task_type"], _expected(r))]
    wrong = [r for r in known if r["response"] != reference_response(r["task_type"], _expected(r))]
    assert all(r["correction"] is None for r in right)
    corrected = [r for r in wrong if r["correction"] is not None]
    assert 0.10 < len(corrected) / len(wrong) < 0.20  # P_CORRECTION = 0.15
    assert all(r["correction"] == reference_response(r["task_type"], _expected(r)) for r in corrected)
    assert any(not r["success"] for r in corrected)  # failed calls too


def test_feedback_follows_correctness(rows: list[dict]) -> None:
    def mean(values: list[int]) -> float:
        return sum(values) / len(values)

    rated = [r for r in rows if r["user_feedback"] is not None and r["user_id"] != GAMER_USER_ID and r["success"]]
    good = [
        r["user_feedback"]
        for r in rated
        if _expected(r) and r["response"] == reference_response(r["task_type"], _expected(r))
    ]
    bad = [
        r["user_feedback"]
        for r in rated
        if _expected(r) and r["response"] != reference_response(r["task_type"], _expected(r))
    ]
    assert mean(good) > 4.0 and mean(bad) < 2.6
    assert 0.15 < sum(r["user_feedback"] is None for r in rows) / N < 0.25


def test_failures_and_error_text(rows: list[dict]) -> None:
    failures = [r for r in rows if not r["success"]]
    assert 0.03 < len(failures) / N < 0.07
    assert all(r["response"].lower().startswith(("error:", "traceback")) for r in failures)
    assert any(r["response"] == "Error: upstream timeout after 30000 ms" for r in failures)


def test_duplicates(rows: list[dict]) -> None:
    pairs = Counter((r["prompt"], r["response"]) for r in rows)
    exact = sum(c - 1 for c in pairs.values()) / N
    assert 0.015 < exact < 0.06
    squash = Counter(re.sub(r"[\W_]+", " ", r["prompt"].lower()).strip() for r in rows)
    near = sum(c - 1 for c in squash.values()) / N - exact
    assert 0.015 < near < 0.06


def test_planted_pii_and_secrets(rows: list[dict]) -> None:
    text = "\n".join(r["prompt"] for r in rows)
    patterns = {
        "email": r"[\w.]+@[\w.]+\.\w+",
        "phone": r"\+1 \d{3}-555-\d{4}",
        "ipv4": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        "openai": r"\bsk-[A-Za-z0-9]{48}\b",
        "aws": r"\bAKIA[A-Z0-9]{16}\b",
        "github": r"\bghp_[A-Za-z0-9]{36}\b",
    }
    for name, pattern in patterns.items():
        assert re.search(pattern, text), name
    cards = re.findall(r"\b\d{4} \d{4} \d{4} \d{4}\b", text)
    assert cards and all(_luhn_ok(c.replace(" ", "")) for c in cards)
    anything = "|".join(patterns.values()) + r"|\b\d{4} \d{4} \d{4} \d{4}\b"
    share = sum(bool(re.search(anything, r["prompt"])) for r in rows) / N
    assert 0.03 < share < 0.09


def test_users_latency_tokens(rows: list[dict]) -> None:
    users = {r["user_id"] for r in rows if r["user_id"]}
    assert 45 <= len(users) <= 55 and GAMER_USER_ID in users
    gamer = [r for r in rows if r["user_id"] == GAMER_USER_ID and r["user_feedback"] is not None and _expected(r)]
    gamer_wrong = [
        r for r in gamer if r["success"] and r["response"] != reference_response(r["task_type"], _expected(r))
    ]
    assert gamer_wrong and all(r["user_feedback"] == 5 for r in gamer_wrong)
    latencies = sorted(r["latency_ms"] for r in rows)
    assert latencies[N // 2] < 1000 and any(v > 10_000 for v in latencies)
    ratio = [r["tokens_used"] / (len(r["prompt"]) + len(r["response"])) for r in rows]
    assert all(0.15 < x < 0.35 for x in ratio)
