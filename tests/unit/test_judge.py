"""The pairwise LLM judge on a free-text task type, through the real ``openai`` client and the fake server.

The fake answers judge requests from the simulator's known truth (``ftops_dev.judge_standin``), or always "A"
(a judge biased to the first position). Answers come from the simulator's ``support_reply`` task: right ones
in another phrasing than the reference (so exact match calls them all wrong), wrong ones naming another action.
"""

from __future__ import annotations

import json
import random
import stat
import sys
import types
from pathlib import Path

import openai
import pytest
from fake_openai import FakeOpenAI
from ftops_dev.judge_standin import chat_completion, verdict
from ftops_dev.known_truth import expected_answer, is_right
from ftops_dev.task_types import (
    FREE_TEXT_TASK_TYPES,
    SUPPORT_ACTIONS,
    TASK_TYPES,
    TASKS,
    reference_response,
    support_replies,
)

from ftops.core.config import FtopsConfig, JudgeConfig
from ftops.core.openai_api import RetryableAPIError
from ftops.deployment.gate import judge_criteria, judge_trust
from ftops.evaluation.judge import (
    JudgeBudgetError,
    compare_answers,
    judge_messages,
    parse_verdict,
)
from ftops.evaluation.judge_calibration import JudgeCalibration, calibrate, cohen_kappa
from ftops.evaluation.metrics import normalise

TASK = "support_reply"
CHAT = "POST /v1/chat/completions"
N = 60


def _items(n: int = N, seed: int = 11) -> list[tuple[str, str]]:
    """``(prompt, slot)`` of ``n`` distinct simulated support messages."""
    rng, items, seen = random.Random(seed), [], set()
    while len(items) < n:
        prompt, slot, _ = TASKS[TASK][0](rng)
        if prompt not in seen:
            seen.add(prompt)
            items.append((prompt, slot))
    return items


def _right(slot: str, k: int = 1) -> str:
    """A right reply in another phrasing than the reference (``k`` = 1 or 2: two such phrasings)."""
    replies = support_replies(slot)
    return replies[(replies.index(reference_response(TASK, slot)) + k) % len(replies)]


def _wrong(slot: str, rng: random.Random) -> str:
    """The simulator's wrong reply: another action for the same product and order."""
    return reference_response(TASK, TASKS[TASK][1](rng, slot))


def _answers(items: list[tuple[str, str]], right_share: float, seed: int) -> tuple[list[str], list[bool]]:
    """Answers right on ``right_share`` of the items (which ones: by ``seed``), each model in its own phrasing."""
    rng = random.Random(seed)
    right = [i < round(right_share * len(items)) for i in range(len(items))]
    rng.shuffle(right)
    return [_right(s, seed) if ok else _wrong(s, rng) for (_, s), ok in zip(items, right, strict=True)], right


@pytest.fixture
def cfg(tmp_path: Path) -> JudgeConfig:
    return JudgeConfig(model="gpt-4.1-mini", max_calls=1000, price_per_1m_tokens=2.0, max_retries=2, timeout_s=10,
                       cache_dir=str(tmp_path / "judge-cache"))  # fmt: skip


@pytest.fixture(scope="module")
def eval_set() -> dict[str, list]:
    items = _items()
    candidate, cand_right = _answers(items, 0.8, seed=1)
    champion, champ_right = _answers(items, 0.4, seed=2)
    rng = random.Random(3)
    for i, (_, slot) in enumerate(items):
        while champion[i] == candidate[i]:  # the same wrong reply from both: another wrong one
            champion[i] = _wrong(slot, rng)
    return {"prompts": [p for p, _ in items], "references": [reference_response(TASK, s) for _, s in items],
            "candidate": candidate, "champion": champion, "cand_right": cand_right, "champ_right": champ_right}  # fmt: skip


def _client(server: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)


def _compare(server: FakeOpenAI, cfg: JudgeConfig, s: dict[str, list], **kw):
    return compare_answers(_client(server), cfg, s["prompts"], s["candidate"], s["champion"],
                           references=s["references"], task_type=TASK, **kw)  # fmt: skip


TRUSTED = JudgeCalibration(model="gpt-4.1-mini", kappa=0.95, accuracy=0.97, pairs=N, evalset="evalset/support_reply/v1",
                           calibrated_at="2026-12-01T00:00:00+00:00")  # fmt: skip


# -- the free-text task type ---------------------------------------------------------------------------------------
def test_support_reply_has_many_phrasings_and_a_known_truth() -> None:
    items = _items(200, seed=3)
    assert len({p.split(":")[0][:25] for p, _ in items}) > 10  # many wrappers and message shapes
    assert {s.split("|")[0] for _, s in items} == set(SUPPORT_ACTIONS)
    for prompt, slot in items:
        assert expected_answer(TASK, prompt) == slot
        assert expected_answer(TASK, "  " + prompt.upper().replace(" ", "  ") + " thx") == slot  # near-duplicate noise
        replies = support_replies(slot)
        assert len(set(replies)) == 3 and reference_response(TASK, slot) in replies
        assert all(is_right(TASK, prompt, r) and len(r) >= 50 for r in replies)
        action, product, order = slot.split("|")
        for other in SUPPORT_ACTIONS:
            if other != action:
                wrong = support_replies(f"{other}|{product}|{order}")
                assert not any(is_right(TASK, prompt, r) for r in wrong)
                assert not is_right(TASK, prompt, replies[0] + " " + wrong[0])  # naming every action is not right
        assert not is_right(TASK, prompt, replies[0].replace(product, "gadget"))  # the wrong product
    with pytest.raises(LookupError):
        is_right(TASK, "What is the capital of France?", "Paris")


def test_the_known_truth_is_read_back_from_every_simulated_prompt() -> None:
    from ftops_dev.simulate import generate_interactions

    rows = [r for r in generate_interactions(3000, seed=4, task_types=list(TASKS)) if r["metadata"]]
    assert {r["task_type"] for r in rows} == set(TASKS)
    for r in rows:
        assert expected_answer(r["task_type"], r["prompt"]) == json.loads(r["metadata"])["expected"], r["prompt"]
    assert TASK not in TASK_TYPES and FREE_TEXT_TASK_TYPES == (TASK,)
    assert {r["task_type"] for r in generate_interactions(300, seed=4)} == set(TASK_TYPES)  # the default: 3 types


def test_ftops_simulate_writes_support_replies_on_request(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from ftops.cli import main

    url = f"sqlite:///{tmp_path / 'wh.db'}"
    assert main(["simulate", "--rows", "120", "--task-types", TASK, "--warehouse-url", url]) == 0
    with sa.create_engine(url).connect() as conn:
        types_ = conn.exec_driver_sql("select distinct task_type from interactions").scalars().all()
    assert types_ == [TASK]


# -- the judge ---------------------------------------------------------------------------------------------------------
def test_verdicts_are_parsed_strictly() -> None:
    assert [parse_verdict(t) for t in ("A", " B\n", "tie", "TIE")] == ["A", "B", "tie", "tie"]
    assert {parse_verdict(t) for t in ("A.", "Answer: A", "", None, "a", "A or B")} == {"unparseable"}


def test_stand_in_prefers_the_right_answer_and_ties_otherwise() -> None:
    prompt, slot = _items(1)[0]
    right, wrong = _right(slot), _wrong(slot, random.Random(0))
    assert verdict(judge_messages(prompt, right, wrong)) == "A"
    assert verdict(judge_messages(prompt, wrong, right)) == "B"
    assert verdict(judge_messages(prompt, right, reference_response(TASK, slot))) == "tie"
    assert verdict(judge_messages("Unknown question?", "x", "y", reference="y")) == "B"  # no truth: the reference
    assert verdict(judge_messages("Unknown question?", "x", "y")) == "tie"
    body = {"model": "judge", "messages": judge_messages(prompt, wrong, right, task=TASK)}
    assert chat_completion(body)["choices"][0]["message"]["content"] == "B"  # what a demo server answers
    assert chat_completion(body, answer="A")["choices"][0]["message"]["content"] == "A"
    with pytest.raises(ValueError, match="not an FT-Ops judge request"):
        verdict([{"role": "user", "content": "hi"}])


def test_a_candidate_right_80_percent_beats_a_champion_right_40_percent(eval_set, cfg) -> None:
    s = eval_set
    assert sum(s["cand_right"]) == 48 and sum(s["champ_right"]) == 24
    assert not any(normalise(c) == normalise(r) for c, r in zip(s["candidate"], s["references"], strict=True))
    with FakeOpenAI() as server:
        result = _compare(server, cfg, s)
        assert server.judge_calls == result.calls == 2 * N
    wins = sum(c and not h for c, h in zip(s["cand_right"], s["champ_right"], strict=True))
    losses = sum(h and not c for c, h in zip(s["cand_right"], s["champ_right"], strict=True))
    assert (result.wins, result.losses, result.ties, result.n) == (wins, losses, N - wins - losses, N)
    assert result.net_win == pytest.approx((wins - losses) / N) and result.net_win >= 0.3
    assert result.win_rate == pytest.approx((wins + (N - wins - losses) / 2) / N)
    assert result.net_win_ci[0] > 0.1 and result.win_rate_ci[0] > 0.5
    assert result.tokens > 0 and result.cost == pytest.approx(result.tokens * 2.0 / 1e6)
    assert result.cached == 0 and result.unparseable == 0
    assert [line.split(":")[0] for line in judge_criteria(result, TRUSTED, cfg, TASK)] == ["ok", "ok"]
    tags = result.tags(TRUSTED.kappa)
    assert tags["judge.kappa"] == "0.9500" and float(tags["metric.judge_net_win_ci_low"]) > 0
    assert tags["metric.judge_calls"] == str(2 * N)


def test_a_judge_that_always_says_a_gives_a_tie_and_fails_the_gate(eval_set, cfg) -> None:
    with FakeOpenAI(judge_answer="A") as server:
        result = _compare(server, cfg, eval_set)
        assert server.judge_calls == 2 * N
    assert (result.wins, result.losses, result.ties) == (0, 0, N)
    assert result.net_win == 0 and result.net_win_ci[0] <= 0 <= result.net_win_ci[1] and result.win_rate == 0.5
    lines = judge_criteria(result, TRUSTED, cfg, TASK)
    assert lines[0].startswith("ok:") and lines[1].startswith("FAIL: judge net win +0.000")


def test_identical_answers_are_a_tie_without_a_call(eval_set, cfg) -> None:
    s = dict(eval_set, champion=[" " + c for c in eval_set["candidate"][:10]] + eval_set["champion"][10:])
    with FakeOpenAI() as server:
        result = _compare(server, cfg, s)
        assert server.judge_calls == result.calls == 2 * (N - 10)
    assert result.verdicts[:10] == ("tie",) * 10


def test_unparseable_verdicts_count_as_ties_and_are_counted(eval_set, cfg) -> None:
    with FakeOpenAI(judge_answer="I prefer answer A because it is polite.") as server:
        result = _compare(server, cfg, eval_set)
    assert result.ties == N and result.unparseable == 2 * N
    assert "120 unparseable verdicts" in judge_criteria(result, TRUSTED, cfg, TASK)[1]


def test_calibration_refuses_a_position_biased_judge_and_trusts_a_truthful_one(eval_set, cfg) -> None:
    rows = [
        {"prompt": p, "reference": r, "source": "human"}
        for p, r in zip(eval_set["prompts"], eval_set["references"], strict=True)
    ]
    rows.append({"prompt": "teacher-written", "reference": "not a human label", "source": "teacher"})
    with FakeOpenAI(judge_answer="A") as biased:
        bad = calibrate(_client(biased), cfg, rows, evalset="evalset/support_reply/v1", task_type=TASK)
        assert biased.judge_calls == N  # one call per human-labelled row; the teacher row is left out
    assert bad.pairs == N and bad.kappa == pytest.approx(0, abs=1e-9) and bad.accuracy == 0.5
    trusted, why = judge_trust(bad, cfg, TASK)
    assert not trusted
    assert "kappa 0.000" in why and "min_kappa 0.60" in why and "ftops judge calibrate --task-type support_reply" in why
    assert judge_criteria(None, bad, cfg, TASK)[0].startswith("FAIL: judge gpt-4.1-mini kappa 0.000")
    fresh = cfg.model_copy(update={"cache_dir": f"{cfg.cache_dir}-truthful"})  # the same model name: else cached
    with FakeOpenAI() as truthful:
        good = calibrate(_client(truthful), fresh, rows, evalset="evalset/support_reply/v1", task_type=TASK)
    assert good.kappa > 0.9 and good.accuracy > 0.95
    assert judge_trust(good, cfg, TASK)[0]
    assert not judge_trust(None, cfg, TASK)[0] and "never calibrated" in judge_trust(None, cfg, TASK)[1]
    other = JudgeCalibration(**{**good.__dict__, "model": "gpt-4o"})
    assert "is of gpt-4o, but the configured judge is gpt-4.1-mini" in judge_trust(other, cfg, TASK)[1]


def test_cohen_kappa() -> None:
    assert cohen_kappa(["A", "B", "A", "B"], ["A", "B", "A", "B"]) == 1
    assert cohen_kappa(["A", "B", "A", "B"], ["A", "A", "A", "A"]) == 0
    assert cohen_kappa(["A", "B", "A", "B"], ["B", "A", "B", "A"]) == -1
    assert cohen_kappa(["A", "B", "A", "B"], ["A", "B", "tie", "tie"]) == pytest.approx((0.5 - 0.25) / 0.75)


def test_a_second_identical_evaluation_makes_no_calls(eval_set, cfg) -> None:
    with FakeOpenAI() as server:
        first = _compare(server, cfg, eval_set)
        again = _compare(server, cfg, eval_set)
        assert server.calls[CHAT] == 2 * N
        assert (again.calls, again.cached, again.cost) == (0, 2 * N, 0)
        assert again.verdicts == first.verdicts and again.net_win_ci == first.net_win_ci
        changed = dict(eval_set, candidate=[eval_set["candidate"][0] + " Have a nice day!", *eval_set["candidate"][1:]])
        third = _compare(server, cfg, changed)
        assert third.calls == 2 and server.calls[CHAT] == 2 * N + 2  # only the changed answer's two orders
    files = list(Path(cfg.cache_dir or "").rglob("*.json"))
    assert len(files) == 2 * N + 2
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert not any(eval_set["prompts"][0][:30] in f.read_text() for f in files)  # verdicts only, never text
    assert stat.S_IMODE(Path(cfg.cache_dir or "").stat().st_mode) == 0o700


def test_a_budget_too_small_fails_before_any_call(eval_set, cfg) -> None:
    small = cfg.model_copy(update={"max_calls": 2 * N - 1})
    with FakeOpenAI() as server:
        with pytest.raises(
            JudgeBudgetError, match=rf"needs {2 * N} new calls .*max_calls = {2 * N - 1}.*nothing was spent"
        ):
            _compare(server, small, eval_set)
        assert server.calls[CHAT] == 0
        _compare(server, cfg, eval_set)  # fills the cache: the budget counts only new calls
        assert _compare(server, small.model_copy(update={"max_calls": 1}), eval_set).calls == 0


def test_rate_limits_are_retried_and_failures_name_the_endpoint_not_the_prompt(eval_set, cfg) -> None:
    with FakeOpenAI() as server:
        server.fail_next(2, 429, route=CHAT)
        result = _compare(server, cfg, eval_set)
        assert result.calls == 2 * N and server.calls[CHAT] == 2 * N + 2
        server.fail_next(10, 503, route=CHAT)
        one = cfg.model_copy(update={"max_retries": 1, "concurrency": 1, "cache_dir": cfg.cache_dir + "-2"})
        with pytest.raises(RetryableAPIError) as err:
            _compare(server, one, eval_set)
        base_url = server.base_url
    text = str(err.value)
    assert base_url in text and "HTTP 503" in text and "gpt-4.1-mini" in text
    assert not any(p[:20] in text for p in eval_set["prompts"]) and err.value.__suppress_context__


def test_calibrate_command_records_on_the_registered_model(eval_set, tmp_path, monkeypatch, mlflow_store) -> None:
    """``ftops judge calibrate`` wiring, with a stand-in for the eval-set module (its contract: CONTRACT.md)."""
    from ftops.cli import main
    from ftops.evaluation.judge_calibration import read_calibration
    from ftops.registry import models as registry

    rows = [
        {"prompt": p, "reference": r, "source": "imported"}
        for p, r in zip(eval_set["prompts"], eval_set["references"], strict=True)
    ]
    version = types.SimpleNamespace(task_type=TASK, version=1, content_hash="0" * 64, tag="evalset/support_reply/v1")
    fake = types.ModuleType("ftops.datasets.evalsets")
    fake.EvalSets = lambda registry_: types.SimpleNamespace(  # type: ignore[attr-defined]
        latest=lambda t: version if t == TASK else None, read=lambda v: rows
    )
    monkeypatch.setitem(sys.modules, "ftops.datasets.evalsets", fake)
    monkeypatch.setattr("ftops.pipeline.common.dataset_registry", lambda cfg: None)
    config = tmp_path / "ftops.yaml"

    def use_cache(name: str) -> None:  # both fake judges are "gpt-4.1-mini": one cache each
        config.write_text(f"evaluation:\n  metrics: {{{TASK}: judge}}\n  judge: {{cache_dir: {tmp_path / name}}}\n")

    use_cache("biased")
    monkeypatch.setenv("FTOPS_CONFIG", str(config))
    assert FtopsConfig.model_validate({"evaluation": {"metrics": {TASK: "judge"}}}).evaluation.metric(TASK) == "judge"
    monkeypatch.delenv("AIRFLOW_CONN_FTOPS_JUDGE", raising=False)
    assert main(["judge", "calibrate", "--task-type", TASK]) == 2  # no connection: nothing recorded
    assert read_calibration(TASK) is None
    with FakeOpenAI(judge_answer="A") as biased, FakeOpenAI() as truthful:
        monkeypatch.setenv("AIRFLOW_CONN_FTOPS_JUDGE", json.dumps({"conn_type": "openai", "host": biased.base_url,
                                                                  "password": "sk-judge"}))  # fmt: skip
        assert main(["judge", "calibrate", "--task-type", TASK]) == 1  # below min_kappa
        assert registry.model_tags(TASK)["judge.kappa"] == "0.0000"
        use_cache("truthful")
        monkeypatch.setenv("AIRFLOW_CONN_FTOPS_JUDGE", json.dumps({"conn_type": "openai", "host": truthful.base_url,
                                                                  "password": "sk-judge"}))  # fmt: skip
        assert main(["judge", "calibrate", "--task-type", TASK]) == 0
        assert truthful.api_keys_seen[0] == "sk-judge"
    recorded = read_calibration(TASK)
    assert recorded is not None and recorded.kappa > 0.9 and recorded.evalset == version.tag
    assert recorded.model == "gpt-4.1-mini" and recorded.pairs == N
    assert main(["judge", "calibrate", "--task-type", "sentiment"]) == 2  # no eval set for it


def test_judge_gate_asks_nothing_of_an_untrusted_judge(eval_set, tmp_path, mlflow_store) -> None:
    from ftops.evaluation.judge_calibration import record_calibration
    from ftops.pipeline.judge import judge_gate

    cfg = FtopsConfig.model_validate({"evaluation": {"metrics": {"support_gate": "judge"},
                                                     "judge": {"cache_dir": str(tmp_path / "c")}}})  # fmt: skip
    s = eval_set
    args = (s["prompts"], s["candidate"], s["champion"], s["references"])
    with FakeOpenAI() as server:
        untrusted = judge_gate(cfg, "support_gate", _client(server), *args)
        assert server.judge_calls == 0 and not untrusted.passed and untrusted.result is None
        assert "never calibrated" in untrusted.reasons[0] and untrusted.tags["judge.kappa"] == "none"
        record_calibration("support_gate", JudgeCalibration(**{**TRUSTED.__dict__, "kappa": 0.4}))
        low = judge_gate(cfg, "support_gate", _client(server), *args)
        assert server.judge_calls == 0 and not low.passed and "kappa 0.400" in low.reasons[0]
        record_calibration("support_gate", TRUSTED)
        ok = judge_gate(cfg, "support_gate", _client(server), *args)
        assert server.judge_calls == 2 * N
    assert ok.passed and ok.result is not None and ok.tags["judge.kappa"] == "0.9500"
    assert set(ok.metrics) == {"judge_win_rate", "judge_net_win", "judge_net_win_ci_low", "judge_net_win_ci_high",
                               "judge_calls", "judge_cost"}  # fmt: skip
