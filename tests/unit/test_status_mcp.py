"""``ftops status`` and ``ftops mcp`` on a real installation (a DVC dataset version, an MLflow registry with a
champion, a canary, a previous and an archived version, a SQLite warehouse with decisions and served calls)
while Airflow's REST API is not running: what needs Airflow says so in one line, the rest still answers.

The MCP server is exercised as an assistant would: ``ftops mcp`` spawned over stdio and driven by the SDK's
own client. The paths that reach a running Airflow are in ``tests/integration/test_airflow_requests.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import anyio
import pytest

from tests.status_support import (
    DECISION_KEY,
    PII,
    TASK,
    State,
    build_state,
    free_port,
    mcp_calls,
    tool_error,
    tool_result,
)

TOOLS = {"status", "explain_model", "list_decisions", "request_training", "request_rollback", "erase_user"}


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> State:
    with pytest.MonkeyPatch.context() as mp:
        yield build_state(mp, tmp_path_factory.mktemp("operate"), FTOPS_AIRFLOW_URL=f"http://127.0.0.1:{free_port()}")


def _cli(state: State, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftops.cli", *args], env={**state.env, **env}, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_status_collects_registry_and_warehouse_without_airflow(state: State) -> None:
    from ftops.core.airflow_api import AirflowAPI
    from ftops.pipeline.status import collect_status

    status = collect_status(state.cfg, state.engine, AirflowAPI(), now=state.now)
    assert not status["complete"] and set(status["problems"]) == {"airflow"}
    assert status["active_finetunes"] is None and status["recent"] is None
    [model] = status["models"]
    assert model["champion"]["version"] == "2" and model["champion"]["metrics"]["accuracy"] == {"value": 0.8,
                                                                                               "baseline": 0.6}
    canary = model["canary"]
    assert canary["version"] == "3" and canary["traffic_percent"] == "10" and canary["ramp_step"] == 1
    # deployed 2 h ago, three steps of 24 h / 3 each: the earliest promotion is 22 h away
    assert canary["hours_to_promotion"] == pytest.approx(22.0, abs=0.01)
    assert canary["live"]["requests"] == 20 and canary["live"]["error_rate"] == pytest.approx(0.1)
    assert model["champion"]["live"]["requests"] == 20  # over the canary's window
    assert status["decisions"][0]["decision_key"] == DECISION_KEY
    assert PII not in json.dumps(status)


def test_canary_schedule_counts_the_remaining_steps(state: State) -> None:
    from ftops.pipeline.status import canary_schedule

    started = state.now - timedelta(hours=3)
    tags = {"deployed_at": (state.now - timedelta(hours=11)).isoformat(), "ramp_step": "1",
            "ramp_started_at": started.isoformat()}
    at_step_2 = canary_schedule(state.cfg, tags, state.now)
    assert at_step_2["ramp_step"] == 2 and at_step_2["hours_to_promotion"] == pytest.approx(13.0)
    assert canary_schedule(state.cfg, {"ramp_step": "junk"}, state.now)["ramp_step"] == 1  # no time: no ETA


def test_status_command_says_airflow_is_unreachable_and_shows_the_rest(state: State) -> None:
    out = _cli(state, "status")
    text = out.stdout
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in text + out.stderr
    url = state.env["FTOPS_AIRFLOW_URL"]
    assert f"! Airflow REST API at {url}: unreachable (connection refused) — start it with `make ui`" in text
    assert "champion v2 on dataset/sentiment/v1" in text and "accuracy 0.800 vs 0.600" in text
    assert "canary   v3" in text and "traffic 10 %, ramp step 1/3 (10→50→100 %, 8 h each)" in text
    assert "earliest promotion in 22.0 h" in text
    assert "20 calls, error rate 0.100" in text
    assert "TRAIN" in text and "brings 15 new examples" in text
    assert PII not in text


def test_status_command_says_mlflow_is_unreachable_within_seconds(state: State) -> None:
    started = time.monotonic()
    out = _cli(state, "status", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 60  # no minutes of HTTP retries
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert "! MLflow registry: unreachable: MLflow tracking store http://127.0.0.1:" in out.stdout
    assert "not available: the MLflow registry did not answer" in out.stdout
    assert "brings 15 new examples" in out.stdout  # the warehouse still answers


def test_mcp_server_through_the_sdk_client(state: State) -> None:
    from ftops.warehouse.state import read_decisions

    calls = [
        ("explain_model", {"task_type": TASK, "version": 2}),
        ("explain_model", {"task_type": "../x", "version": 1}),
        ("explain_model", {"task_type": TASK, "version": 99}),
        ("explain_model", {"task_type": TASK, "version": 0}),
        ("list_decisions", {"limit": 5}),
        ("request_training", {"task_type": TASK, "reason": "the new labelling guide"}),
        ("request_training", {"task_type": TASK, "reason": ""}),
        ("request_rollback", {"task_type": TASK, "reason": "v4 looked better", "to_version": 4}),
        ("request_rollback", {"task_type": TASK, "reason": "skip the ramp", "to_version": 3}),
        ("request_rollback", {"task_type": TASK, "reason": "v2 misbehaves"}),
        ("status", {}),
    ]
    tools, results = anyio.run(mcp_calls, state, calls)
    schemas = {t.name: t.input_schema for t in tools.tools}
    assert set(schemas) == TOOLS
    assert set(schemas["explain_model"]["required"]) == {"task_type", "version"}
    assert set(schemas["request_training"]["required"]) == {"task_type", "reason"}
    assert set(schemas["request_rollback"]["required"]) == {"task_type", "reason"}
    assert schemas["erase_user"]["required"] == ["user_id"]
    assert schemas["request_training"]["properties"]["reason"]["maxLength"] == 500
    explained, bad_name, missing, bad_version, decisions, refused, no_reason = results[:7]
    archived, canary, rollback, status = results[7:]

    e = tool_result(explained)
    assert e["dataset"]["version"] == state.dataset_tag
    assert (e["dataset"]["train_rows"], e["dataset"]["test_rows"]) == (12, 3)
    assert e["training"]["policy"] == "new_data" and e["training"]["decision_key"] == DECISION_KEY
    assert e["trigger_decision"]["policy"] == "new_data" and "brings 15 new examples" in e["trigger_decision"]["reason"]
    assert e["gate"]["decision"] == "deploy" and e["gate"]["metrics"]["accuracy"] == {"value": 0.8, "baseline": 0.6}
    assert e["gate"]["reasons"] == ["ok accuracy 0.800 ≥ 0.600 + 0.05", "ok perplexity 3.500 ≤ 4.000"]
    assert e["aliases"] == ["champion"] and e["training"]["train_seconds"] == 42.0
    assert PII not in json.dumps(e)  # the decision's scrubbed failure examples are withheld too
    assert "pattern" in tool_error(bad_name) and "has no version 99" in tool_error(missing)
    assert "greater than or equal to 1" in tool_error(bad_version)
    assert tool_result(decisions)["decisions"][0]["decision_key"] == DECISION_KEY

    r = tool_result(refused)
    assert r["accepted"] is False and "canary v3" in r["reason"]
    [recorded] = read_decisions(state.engine, TASK, kind="training_request")
    assert (recorded["train"], recorded["reason"], recorded["decision_key"]) == (False, r["reason"], r["decision_key"])
    assert recorded["details"]["requested_reason"] == "the new labelling guide"
    assert "reason" in tool_error(no_reason)
    assert "archived" in tool_result(archived)["reason"]
    assert "is the canary" in tool_result(canary)["reason"]
    # v1 ('previous') passes the guards; Airflow is not running, so the trigger fails and says so
    assert "unreachable (connection refused)" in tool_error(rollback)
    rollbacks = read_decisions(state.engine, TASK, kind="rollback_request")
    assert [d["train"] for d in rollbacks] == [False] * 3
    assert any("ftops_rollback could not be triggered" in d["reason"] for d in rollbacks)
    s = tool_result(status)
    assert s["problems"].keys() == {"airflow"} and s["models"][0]["canary"]["version"] == "3"


def test_mcp_erase_user_answers_with_the_pseudonymous_key_only(state: State) -> None:
    _, (erased, empty) = anyio.run(mcp_calls, state, [("erase_user", {"user_id": "user-1"}),
                                                 ("erase_user", {"user_id": ""})])  # fmt: skip
    answer = tool_result(erased)
    assert answer["user_key"] and answer["rows_marked"] > 0
    assert "user-1" not in json.dumps(answer)
    assert "printable" in tool_error(empty)


HOSTILE = "pattern \x1b]8;;https://evil.example\x07click\x1b]8;;\x07 \x1b[2J\x1b[31mred\x9b1m\x00 done"


def test_control_characters_never_reach_a_terminal_or_an_assistant(state: State) -> None:
    """Last in the file: it adds a decision to the module's installation."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from ftops.core.text import printable
    from ftops.warehouse.state import record_decision

    assert printable(HOSTILE) == "pattern ]8;;https://evil.exampleclick]8;; [2J[31mred1m done"
    assert printable("a\tb\nc\x85d") == "a\tb\ncd" and printable("a\tb\nc", keep_breaks=False) == "a b c"
    engine = sa.create_engine(state.env["FTOPS_WAREHOUSE_URL"])
    record_decision(engine, {"decision_key": "hostile", "decided_at": datetime.now(UTC), "task_type": TASK,
                             "train": False, "reason": HOSTILE, "dataset_version": None, "details": {"note": HOSTILE},
                             "kind": "training_request", "policy": "force", "run_id": None})  # fmt: skip
    out = _cli(state, "status")
    assert "red1m done" in out.stdout and not any(c in out.stdout for c in "\x1b\x07\x9b\x00")
    _, (listed, status) = anyio.run(mcp_calls, state, [("list_decisions", {"limit": 3}), ("status", {})])
    for answer in (tool_result(listed), tool_result(status)):
        text = json.dumps(answer, ensure_ascii=False)
        assert "red1m done" in text and not any(c in text for c in "\x1b\x07\x9b\x00")
        assert "untrusted data" in answer["untrusted_text"]
