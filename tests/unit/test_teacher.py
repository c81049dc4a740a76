"""Teacher relabelling against the stand-in teacher (a local OpenAI-compatible server, reached through the real
``openai`` client) on a real warehouse (SQLite; PostgreSQL for the store where marked): the nightly budget in
rows and money, no call paid twice, outages that degrade to "no relabel", format and judge checks, secrets that
never leave, error-pattern priority, and curation that publishes with the teacher down."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest
import sqlalchemy as sa
from fakes import HashEmbedder, erasure_config, fresh_warehouse
from ftops_dev.known_truth import is_right
from ftops_dev.simulate import generate_interactions
from ftops_dev.teacher_standin import TeacherStandin

from ftops.core.config import CurationConfig, EvaluationConfig, FtopsConfig, JudgeConfig, TeacherConfig
from ftops.curation.scrub import find_leaks, scrub
from ftops.curation.teacher import relabel, request_key, teacher_messages, worst_cost
from ftops.pipeline.curate import curate_task_type
from ftops.pipeline.relabel import TEACHER_COLUMN, relabel_window
from ftops.warehouse.schema import insert_interactions
from ftops.warehouse.teacher_store import TeacherStore, delete_for_rows

NOW = datetime(2026, 11, 1, 3, tzinfo=UTC)
SENTIMENT_FORMAT = r"Sentiment: (positive|negative|neutral)\. .+"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path: Path) -> Iterator[sa.Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield from fresh_warehouse(request.param, tmp_path, url)


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[sa.Engine]:
    yield from fresh_warehouse("sqlite", tmp_path)


@pytest.fixture
def teacher() -> Iterator[TeacherStandin]:
    with TeacherStandin(accuracy=1.0) as standin:
        yield standin


def _client(standin: TeacherStandin) -> Any:
    return lambda: openai.OpenAI(api_key="sk-test", base_url=standin.base_url)


def _failures(n: int, seed: int = 3, **overrides: Any) -> list[dict[str, Any]]:
    """``n`` simulated sentiment rows with distinct prompts, all failed calls without a correction."""
    rows, seen = [], set()
    for r in generate_interactions(20 * n, seed=seed, task_types=("sentiment",)):
        if r["prompt"] not in seen and len(rows) < n:
            seen.add(r["prompt"])
            rows.append({**r, "response": "Sentiment: neutral. Wrong, but long enough to look like an answer.",
                         "success": True, "task_success": False, "user_feedback": 1, "correction": None,
                         **overrides})  # fmt: skip
    assert len(rows) == n
    return rows


def _relabel(engine: sa.Engine, standin: TeacherStandin | None, rows: list[dict[str, Any]], cfg: TeacherConfig,
             **kw: Any):  # fmt: skip
    return relabel(rows, task_type="sentiment", cfg=cfg, curation=CurationConfig(), store=TeacherStore(engine),
                   client=_client(standin) if standin else None, now=kw.pop("now", NOW), **kw)  # fmt: skip


def test_the_rows_budget_caps_calls_per_day_and_counts_what_it_skipped(engine, teacher) -> None:
    cfg = TeacherConfig(enabled=True, max_rows=3, max_cost=100)
    rows = _failures(10)
    first = _relabel(engine, teacher, rows, cfg)
    assert first.calls == 3 and len(teacher.requests) == 3 and first.skipped_budget == 7
    assert len(first.accepted) == 3 and first.skipped_reason is None
    later = _relabel(engine, teacher, rows, cfg, now=NOW + timedelta(hours=5))  # the same day: budget spent
    assert later.calls == 0 and later.cached == 3 and later.skipped_budget == 7 and len(teacher.requests) == 3
    tomorrow = _relabel(engine, teacher, rows, cfg, now=NOW + timedelta(days=1))
    assert tomorrow.calls == 3 and tomorrow.skipped_budget == 4 and len(teacher.requests) == 6


def test_task_types_relabelled_at_once_share_one_budget(engine) -> None:
    """Curation maps a task per task type: two relabels running at once must not both spend the day's rows (each
    reading 'nothing spent yet' before the other's answers were stored spent twice the budget before the fix)."""
    from ftops_dev.teacher_standin import teacher_reply

    def slow_reply(prompt: str) -> str:
        time.sleep(0.2)  # both runs are in flight together
        return teacher_reply(prompt, accuracy=1.0)

    cfg = TeacherConfig(enabled=True, max_rows=6, max_cost=100, concurrency=4)
    batches = [_failures(10, seed=3), _failures(10, seed=11)]
    assert not {r["prompt"] for r in batches[0]} & {r["prompt"] for r in batches[1]}
    with TeacherStandin(answer_for=slow_reply) as standin, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda rows: _relabel(engine, standin, rows, cfg), batches))
    assert sum(r.calls for r in results) == len(standin.requests) == 6, [r.calls for r in results]
    assert sum(r.skipped_budget for r in results) == 20 - 6
    assert TeacherStore(engine).spent_since(NOW.replace(hour=0))[0] == 6  # no reservation left standing


def test_the_money_budget_stops_before_it_would_be_exceeded(sqlite, teacher) -> None:
    # prices chosen so the worst case of one call (~0.1) is far above what it costs (~0.02)
    cfg = TeacherConfig(enabled=True, max_rows=100, max_cost=0.35, price_input=10.0, price_output=1000.0,
                        max_answer_tokens=100)  # fmt: skip
    rows = _failures(40)
    result = _relabel(sqlite, teacher, rows, cfg)
    assert 3 < result.calls < 40 and result.calls == len(teacher.requests)
    assert result.cost <= cfg.max_cost
    assert result.skipped_budget == 40 - result.calls and result.skipped_reason is None
    worst = min(worst_cost(cfg, [{"role": "user", "content": r["prompt"]}]) for r in rows)
    assert cfg.max_cost - result.cost < worst + 0.05  # it stopped only when no call's worst case fit
    assert TeacherStore(sqlite).spent_since(NOW.replace(hour=0))[1] == pytest.approx(result.cost)


def test_a_retry_pays_nothing_twice(engine, teacher) -> None:
    cfg = TeacherConfig(enabled=True, max_rows=50)
    rows = _failures(8) + [{**_failures(1, seed=9)[0], "id": "same-prompt-other-row"}]
    first = _relabel(engine, teacher, rows, cfg)
    sent = len(teacher.requests)
    assert first.calls == sent == 9 and first.cost > 0 and len(first.accepted) == 9
    again = _relabel(engine, teacher, rows, cfg)
    assert len(teacher.requests) == sent  # zero new HTTP requests
    assert again.calls == 0 and again.cost == 0 and again.cached == 9 and again.accepted == first.accepted
    twin = {**rows[0], "id": "a-new-row-same-prompt"}  # a new row with a stored prompt: answered by the store
    third = _relabel(engine, teacher, [twin], cfg)
    assert third.calls == 0 and third.accepted == {"a-new-row-same-prompt": first.accepted[rows[0]["id"]]}
    assert len(teacher.requests) == sent
    assert TeacherStore(engine).answers("sentiment", [twin["id"], rows[1]["id"]]).keys() == {twin["id"], rows[1]["id"]}


def test_an_answer_that_breaks_the_format_rule_is_rejected_with_a_reason(sqlite) -> None:
    rows = _failures(4)
    odd = rows[0]["prompt"]
    cfg = TeacherConfig(enabled=True, formats={"sentiment": SENTIMENT_FORMAT})
    with TeacherStandin(accuracy=1.0, answer_for=lambda p: "I think it is positive." if p == odd else
                        "Sentiment: positive. The review describes a satisfying experience.") as standin:  # fmt: skip
        result = _relabel(sqlite, standin, rows, cfg)
    assert result.rejected == {rows[0]["id"]: "format"}
    assert set(result.accepted) == {r["id"] for r in rows[1:]}
    assert rows[0]["id"] not in TeacherStore(sqlite).answers("sentiment", [r["id"] for r in rows])
    with TeacherStandin(answer_for=lambda p: "Error: I cannot do that right now, sorry about it, try later.") as bad:
        errors = _relabel(sqlite, bad, _failures(2, seed=11), TeacherConfig(enabled=True))
    assert set(errors.rejected.values()) == {"error_text"}  # curation's response rules apply to teacher answers


def test_only_failed_or_low_rated_rows_without_a_correction_are_sent(sqlite, teacher) -> None:
    good, corrected, low, failed = _failures(4)
    rows = [{**good, "task_success": None, "user_feedback": 5}, {**corrected, "correction": "Sentiment: positive."},
            {**low, "task_success": None, "user_feedback": 2}, {**failed, "success": False, "user_feedback": None}]
    result = _relabel(sqlite, teacher, rows, TeacherConfig(enabled=True))
    assert result.candidates == 2 and set(result.accepted) == {low["id"], failed["id"]}


def test_secrets_of_the_hidden_row_kinds_never_reach_the_teacher(sqlite, teacher) -> None:
    secrets = ["jane.doe42@example.com", "4111 1111 1111 1111", "sk-" + "a1B2c3D4" * 6,
               "AKIAABCDEFGHIJKLMNOP", "ghp_" + "Z9y8X7w6" * 4 + "abcd"]  # fmt: skip
    rows = [{**r, "prompt": f"{r['prompt']}\nmy secret is {s}"} for r, s in zip(_failures(5), secrets, strict=True)]
    rows.append({**_failures(1, seed=5)[0], "prompt": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + "A" * 60})
    result = _relabel(sqlite, teacher, rows, TeacherConfig(enabled=True))
    sent = teacher.sent_text()
    assert result.calls == 5 and result.unsafe == 1 and len(teacher.requests) == 5
    assert not [s for s in secrets if s in sent] and "PRIVATE KEY" not in sent and "MIIEow" not in sent
    assert find_leaks(sent) == [] and "[EMAIL]" in sent and "[OPENAI_KEY]" in sent


@pytest.mark.parametrize("fault", ["down", "error", "slow", "stopped"])
def test_an_unreachable_teacher_means_no_relabel_and_one_clear_log_line(sqlite, fault, caplog) -> None:
    rows = _failures(6)
    cfg = TeacherConfig(enabled=True, max_retries=0, timeout_s=0.5, concurrency=2)
    with TeacherStandin() as standin:
        standin.mode, standin.delay_s = ("ok" if fault == "stopped" else fault), 3.0
        if fault == "stopped":
            standin.stop()
        with caplog.at_level(logging.INFO, logger="ftops"):
            result = _relabel(sqlite, standin, rows, cfg)
    assert result.skipped_reason and result.skipped_reason.startswith("teacher unreachable")
    assert result.calls == 0 and result.accepted == {} and result.unanswered == 6 and result.cost == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no relabel" in warnings[0]
    assert not [m for m in (r.getMessage() for r in caplog.records) if any(x["prompt"][:30] in m for x in rows)]
    no_client = _relabel(sqlite, None, rows, cfg)
    assert no_client.skipped_reason == "no teacher client configured" and no_client.unanswered == 6


def test_error_pattern_rows_are_relabelled_first(sqlite, teacher) -> None:
    rows = _failures(6)
    urgent = {rows[4]["id"], rows[5]["id"]}
    result = _relabel(sqlite, teacher, rows, TeacherConfig(enabled=True, max_rows=2), priority_ids=urgent)
    assert set(result.accepted) == urgent and result.skipped_budget == 4


def test_the_judge_accepts_only_answers_it_prefers_to_the_served_one(sqlite, tmp_path: Path) -> None:
    rows = _failures(4)
    cfg = FtopsConfig(teacher=TeacherConfig(enabled=True), evaluation=EvaluationConfig(
        metrics={"sentiment": "judge"}, judge=JudgeConfig(model="judge", cache_dir=str(tmp_path / "judge"))))
    frame = pd.DataFrame(rows)
    with TeacherStandin(accuracy=0.5, seed=1) as standin:  # a weak teacher: the judge (truthful) catches it
        summary = relabel_window(sqlite, cfg, "sentiment", frame, embedder=HashEmbedder(), cache=None,
                                 teacher_client=_client(standin), judge_client=_client(standin), now=NOW)  # fmt: skip
        judge_calls = [b for b in standin.requests if b["messages"][0]["role"] == "system"]
    assert summary is not None and judge_calls
    stored = TeacherStore(sqlite)
    for r, answer in zip(rows, frame[TEACHER_COLUMN], strict=True):
        given = next(iter(stored.lookup([request_key("gpt-4.1", teacher_messages(scrub(r["prompt"]).text))]).values()))
        # the served answers are all wrong: a right teacher answer wins, a wrong one ties and is rejected
        assert (answer is not None) == is_right("sentiment", r["prompt"], given.answer)
    assert 0 < summary["accepted"] < 4 and summary["rejected"] == {"judge_prefers_served": 4 - summary["accepted"]}


def test_teacher_down_curation_publishes_without_relabels_and_says_so(sqlite, tmp_path: Path, caplog) -> None:
    base = erasure_config(tmp_path)
    cfg = base.model_copy(update={"teacher": TeacherConfig(enabled=True, max_retries=0, timeout_s=1)})
    rows = generate_interactions(200, seed=4, task_types=("sentiment",))
    insert_interactions(sqlite, rows)
    with TeacherStandin() as standin:
        standin.mode = "error"
        with caplog.at_level(logging.INFO, logger="ftops"):
            result = curate_task_type(sqlite, cfg, "sentiment", run_key="night-1", now=NOW,
                                      embedder=HashEmbedder(), teacher_client=_client(standin))  # fmt: skip
        asked = len(standin.requests)
    assert result["status"] == "versioned" and result["dataset_version"] == "dataset/sentiment/v1"
    teacher = result["teacher"]
    assert teacher["candidates"] > 0 and teacher["accepted"] == 0 and teacher["calls"] == 0 and asked >= 1
    assert teacher["skipped_reason"] == "teacher unreachable: HTTP 500"
    assert any("no relabel" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with TeacherStandin(accuracy=1.0) as standin:  # the next night, the teacher is back
        insert_interactions(sqlite, [{**r, "id": f"n2-{r['id']}", "timestamp": r["timestamp"] + timedelta(days=1)}
                                     for r in generate_interactions(60, seed=5, task_types=("sentiment",))])
        night2 = curate_task_type(sqlite, cfg, "sentiment", run_key="night-2", now=NOW + timedelta(days=1),
                                  embedder=HashEmbedder(), teacher_client=_client(standin))  # fmt: skip
    assert night2["teacher"]["calls"] > 0 and night2["teacher"]["accepted"] > 0
    assert night2["teacher"]["skipped_reason"] is None and night2["status"] in ("versioned", "unchanged", "insufficient")


def test_erasing_rows_deletes_their_teacher_answers(engine, teacher) -> None:
    rows = _failures(3)
    _relabel(engine, teacher, rows, TeacherConfig(enabled=True))
    store = TeacherStore(engine)
    assert delete_for_rows(engine, "interactions", [rows[0]["id"]]) == 1
    assert store.answers("sentiment", [r["id"] for r in rows]).keys() == {rows[1]["id"], rows[2]["id"]}
    assert delete_for_rows(engine, "interactions", [rows[0]["id"]]) == 0


def test_the_summary_says_what_the_teacher_cost_and_did() -> None:
    from ftops.pipeline.summary import _teacher_line

    line = _teacher_line({"calls": 12, "cached": 3, "cost": 0.03, "accepted": 10, "candidates": 15,
                          "rejected": {"format": 2}, "skipped_reason": None, "skipped_budget": 4})  # fmt: skip
    assert "12 calls (3 cached), cost 0.0300" in line and "10 of 15" in line and "format 2" in line
    assert "4 left over budget" in line
    assert "teacher unreachable: HTTP 500" in _teacher_line({"skipped_reason": "teacher unreachable: HTTP 500"})
    assert "not asked" in _teacher_line(None)


def test_the_summary_has_a_line_per_earlier_cycle_with_its_targets_and_teacher() -> None:
    from ftops.datasets.records import DatasetVersion
    from ftops.pipeline.summary import _earlier_line

    meta = {"train_rows": 10, "test_rows": 2, "source_counts": {"train": {"correction": 2, "served": 8}},
            "teacher": {"calls": 5, "cost": 0.01}}  # fmt: skip
    line = _earlier_line(DatasetVersion("sentiment", 1, "abc"), meta)
    assert line == ("  earlier dataset/sentiment/v1: 10 train / 2 test; train targets {'correction': 2, 'served': 8}; "
                    "teacher 5 calls, cost 0.0100")  # fmt: skip
    assert _earlier_line(DatasetVersion("sentiment", 1, "abc"), {}).endswith("not recorded; teacher not asked")
