"""The OpenAI-compatible backend through the real ``openai`` client against the local fake server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import openai
import pytest
from fake_openai import BASE_MODEL_REPLY, FAIL_MARKER, FakeOpenAI

from ftops.core.config import FtopsConfig, OpenAIBackend, apply_overrides
from ftops.core.openai_api import APIRequestError, RetryableAPIError, chat_complete, make_client
from ftops.training.openai_cost import (
    BudgetExceededError,
    check_budget,
    count_example_tokens,
    estimate_cost,
    price_per_1m,
)
from ftops.training.openai_jobs import (
    FineTuneJobFailed,
    JobStatus,
    cancel_job,
    find_job,
    poll_job,
    raise_for_terminal_failure,
    submit_job,
    to_training_jsonl,
)

API_KEY = "sk-ftops-test-0123456789abcdefSECRET"
CREATE = "POST /v1/fine_tuning/jobs"
BACKEND = OpenAIBackend(n_epochs=2, batch_size=2, learning_rate_multiplier=0.5, suffix="demo")


def rows(n: int = 12, extra: str = "") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} + {i}?{extra}"},
                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}], "row_id": f"r{i}"}
            for i in range(n)]  # fmt: skip


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY, running_polls=2) as fake:
        yield fake


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    c = make_client(API_KEY, server.base_url, max_retries=2, timeout=5)
    yield c
    c.close()


def submit(client: openai.OpenAI, key: str = "run-1/code/v1", train: list[dict] | None = None, **kw) -> str:
    kw.setdefault("backend", BACKEND)
    return submit_job(client, train_rows=train or rows(), validation_rows=None, idempotency_key=key,
                      retry_delay_s=0.01, **kw)  # fmt: skip


def poll_until_done(client: openai.OpenAI, job_id: str, limit: int = 20) -> tuple[JobStatus, list[str]]:
    cursor, messages = None, []
    for _ in range(limit):
        status = poll_job(client, job_id, after_event_id=cursor)
        messages += [e.message for e in status.events]
        cursor = status.last_event_id
        if status.done:
            return status, messages
    raise AssertionError(f"job {job_id} did not finish in {limit} polls")


# -- end to end ----------------------------------------------------------------------------------------------
def test_submit_poll_succeed_stream_events_and_the_model_learned(server, client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ftops.training.openai_jobs")
    train = rows()
    job_id = submit(client, train=train, metadata={"task_type": "code"})

    job = server.job(job_id)
    assert job["metadata"] == {"task_type": "code", "ftops_key": "run-1/code/v1"}
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.5}
    assert job["user_provided_suffix"] == "demo"
    uploaded = server.file_contents[job["training_file"]].decode()
    assert "row_id" not in uploaded and uploaded.count("\n") == 12  # only the messages travel

    status, messages = poll_until_done(client, job_id)
    assert status.succeeded and status.fine_tuned_model == f"ft:{BACKEND.base_model}:ftops:demo:{job_id[-8:]}"
    raise_for_terminal_failure(status)  # no error on success
    # every event exactly once, in order, and in the log
    assert messages[0].startswith("Created fine-tuning job") and messages[-1] == "The job has successfully completed"
    assert len(messages) == len(set(messages)) == 8
    assert any(m.startswith("Step 2/2: training loss=") for m in messages)
    assert "The job has successfully completed" in caplog.text
    # trained tokens = the estimate's count (same chars/4 rule in the fake) × epochs
    assert status.trained_tokens == estimate_cost(train, BACKEND).billable_tokens

    learned = chat_complete(client, status.fine_tuned_model, [{"role": "user", "content": "What is 7 + 7?"}])
    base = chat_complete(client, BACKEND.base_model, [{"role": "user", "content": "What is 7 + 7?"}])
    assert learned.text == "7 + 7 = 14." and base.text == BASE_MODEL_REPLY
    assert learned.latency_ms > 0 and learned.usage_tokens > 0
    assert learned.prompt_tokens + learned.completion_tokens == learned.usage_tokens  # priced apart (upstream cost)


def test_second_submit_with_the_same_key_reuses_the_job(server, client) -> None:
    first = submit(client)
    poll_job(client, first)  # the job moves on; still the one to reuse
    assert submit(client) == first
    assert server.calls[CREATE] == 1 and len(server.jobs) == 1
    assert submit(client, key="run-2/code/v1") != first  # another key is another job
    assert len(server.jobs) == 2


def test_lookup_works_when_the_server_ignores_the_metadata_filter(server, client) -> None:
    server.support_metadata_filter = False
    ids = [submit(client, key=f"k{i}") for i in range(3)]
    assert submit(client, key="k0") == ids[0] and len(server.jobs) == 3
    assert find_job(client, "k-unknown") is None


def test_succeeded_job_is_reused_but_a_failed_one_is_replaced(server, client) -> None:
    done = submit(client, key="a")
    poll_until_done(client, done)
    assert submit(client, key="a") == done

    server.fail_next_job = True
    failed = submit(client, key="b")
    status, _ = poll_until_done(client, failed)
    assert status.status == "failed"
    retried = submit(client, key="b")  # a task retry after a failure trains again
    assert retried != failed and len(server.jobs) == 3
    assert find_job(client, "b", include_failed=True).id == retried


def test_lost_create_response_ends_with_exactly_one_job(server, client) -> None:
    server.lose_create_response = True  # the server creates the job, then answers 500
    job_id = submit(client)
    assert server.calls[CREATE] == 1  # not resent: the look-up found the job
    assert [j["id"] for j in server.jobs] == [job_id]
    # and a retried task finds it too
    assert submit(client) == job_id and len(server.jobs) == 1


def test_a_bare_client_retry_would_have_duplicated_the_job(server, client) -> None:
    """Why submit_job turns the client's retries off for the create: the plain call makes two jobs."""
    server.lose_create_response = True
    file_id = client.files.create(file=("t.jsonl", to_training_jsonl(rows())), purpose="fine-tune").id
    client.fine_tuning.jobs.create(model=BACKEND.base_model, training_file=file_id)
    assert len(server.jobs) == 2


def test_create_rate_limited_then_accepted(server, client) -> None:
    server.fail_next(2, 429, route=CREATE)
    job_id = submit(client)
    assert server.calls[CREATE] == 3 and [j["id"] for j in server.jobs] == [job_id]


def test_rate_limits_and_5xx_elsewhere_are_retried_by_the_client(server, client) -> None:
    job_id = submit(client)
    server.fail_next(1, 429)
    server.fail_next(1, 503)
    assert poll_job(client, job_id).status == "queued"


def test_create_that_stays_unavailable_is_retryable(server, client) -> None:
    server.fail_next(10, 500, route=CREATE)
    with pytest.raises(RetryableAPIError, match="HTTP 500") as info:
        submit(client)
    assert isinstance(info.value, ConnectionError) and not isinstance(info.value, ValueError)
    assert server.calls[CREATE] == 3 and server.jobs == []  # 1 + max_retries creates


def test_bad_request_fails_at_once_with_the_api_message(server, client) -> None:
    # learning_rate_multiplier 20 passes nothing in our config (le=10), so send it past the model
    backend = OpenAIBackend.model_construct(**{**BACKEND.model_dump(), "learning_rate_multiplier": 20.0})
    with pytest.raises(APIRequestError, match=r"HTTP 400 \(invalid_hyperparameters\): Invalid value for "
                                              r"hyperparameters.learning_rate_multiplier") as info:  # fmt: skip
        submit(client, backend=backend)
    assert isinstance(info.value, ValueError) and info.value.param == "hyperparameters.learning_rate_multiplier"
    assert server.calls[CREATE] == 1  # not retried


def test_unknown_model_and_unknown_job_are_not_retryable(server, client) -> None:
    backend = BACKEND.model_copy(update={"base_model": "gpt-nonexistent",
                                         "price_per_1m_training_tokens": {"gpt-nonexistent": 1.0}})  # fmt: skip
    with pytest.raises(APIRequestError, match="gpt-nonexistent is not available for fine-tuning"):
        submit(client, backend=backend)
    with pytest.raises(APIRequestError, match="HTTP 404.*Could not find fine-tune: ftjob-missing"):
        poll_job(client, "ftjob-missing")
    with pytest.raises(APIRequestError, match="HTTP 404 \\(model_not_found\\)"):
        chat_complete(client, "ft:gpt-4o-mini-2024-07-18:ftops::nothere", [{"role": "user", "content": "hi"}])


def test_wrong_key_is_an_authentication_error_without_the_key_in_it(server) -> None:
    bad = make_client("sk-wrong-key-XYZ", server.base_url, max_retries=0)
    with pytest.raises(APIRequestError, match="HTTP 401") as info:
        find_job(bad, "k")
    assert "sk-wrong-key-XYZ" not in str(info.value)
    bad.close()


def test_unreachable_server_is_retryable() -> None:
    with FakeOpenAI() as fake:
        url = fake.base_url
    c = make_client(API_KEY, url, max_retries=0, timeout=1)
    with pytest.raises(RetryableAPIError, match="Connection error"):
        find_job(c, "k")
    c.close()


def test_job_that_fails_raises_with_the_api_error(server, client) -> None:
    job_id = submit(client, train=rows(extra=f" {FAIL_MARKER}"))
    status, messages = poll_until_done(client, job_id)
    assert status.status == "failed" and status.error_code == "training_error"
    assert messages[-1].startswith("Fine-tuning job failed: ")
    with pytest.raises(FineTuneJobFailed, match="training_error: The job failed due to an unrecoverable error"):
        raise_for_terminal_failure(status)


def test_invalid_training_file_fails_the_job_in_validation(server, client) -> None:
    job_id = submit(client, train=rows(3))
    status = poll_job(client, job_id)
    assert status.done and status.error_code == "invalid_training_file"
    with pytest.raises(FineTuneJobFailed, match="3 example\\(s\\), but must have at least 10"):
        raise_for_terminal_failure(status)


def test_cancelled_job_raises_and_cancelling_a_finished_one_is_refused(server, client) -> None:
    job_id = submit(client)
    assert cancel_job(client, job_id) == "cancelled"
    status = poll_job(client, job_id)
    assert status.events[-1].message == "Fine-tuning job cancelled"
    with pytest.raises(FineTuneJobFailed, match="was cancelled"):
        raise_for_terminal_failure(status)
    with pytest.raises(APIRequestError, match="already completed"):
        cancel_job(client, job_id)


def test_events_cursor_by_id_or_time_and_across_pages(server, client) -> None:
    server.running_polls = 150  # > one page of 100 events
    job_id = submit(client)
    first = poll_job(client, job_id)
    for _ in range(120):
        client.fine_tuning.jobs.retrieve(job_id)  # the job moves on without us reading events
    later = poll_job(client, job_id, after_event_id=first.last_event_id)
    assert len(later.events) == 121 and later.events[0].message == "Fine-tuning job started"
    ids = [e.id for e in (*first.events, *later.events)]
    assert len(ids) == len(set(ids))
    by_time = poll_job(client, job_id, since=later.events[-2].created_at)
    assert [e.id for e in by_time.events] == [later.events[-1].id, *[e.id for e in by_time.events][1:]]
    assert poll_job(client, job_id, after_event_id=by_time.last_event_id).events[0].message.startswith("Step 122/")


def test_status_is_small_json(server, client) -> None:
    job_id = submit(client)
    data = poll_job(client, job_id).as_dict()
    assert json.loads(json.dumps(data))["status"] == "queued"


# -- cost and budget -----------------------------------------------------------------------------------------
def test_cost_estimate_arithmetic() -> None:
    example = {"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "y" * 799}]}
    # 3 per example + (3 + 100) + (3 + 200) per message
    assert count_example_tokens([example]) == 309
    est = estimate_cost([example] * 1000, OpenAIBackend(n_epochs=3))
    assert (est.tokens_per_epoch, est.billable_tokens) == (309_000, 927_000)
    assert est.usd == pytest.approx(0.927 * 3.0) and est.method == "chars/4"
    words = estimate_cost([example], OpenAIBackend(), count_tokens=lambda s: len(s.split()))
    assert words.tokens_per_epoch == 3 + 4 + 4 and words.method == "<lambda>"


def test_budget_refusal_before_anything_is_uploaded(server, client) -> None:
    backend = BACKEND.model_copy(update={"max_cost_usd": 0.0001})
    est = estimate_cost(rows(), backend)
    with pytest.raises(BudgetExceededError, match=r"estimated \$0\.00 exceeds max_cost_usd \$0\.0001"):
        check_budget(est, backend)
    big = [{"messages": [{"role": "user", "content": "q" * 4000}, {"role": "assistant", "content": "a" * 4000}]}] * 4000
    with pytest.raises(BudgetExceededError, match=r"estimated \$\d+\.\d\d exceeds max_cost_usd \$50: 8,036,000 tokens"):
        submit(client, train=big, backend=OpenAIBackend())
    assert server.files == {} and server.jobs == []
    check_budget(est, BACKEND)  # within budget: no error


def test_unpriced_model_is_refused_and_price_lookup_rules() -> None:
    with pytest.raises(ValueError, match="no training price for model 'gpt-9'"):
        estimate_cost(rows(), OpenAIBackend(base_model="gpt-9"))
    prices = OpenAIBackend().price_per_1m_training_tokens
    assert price_per_1m("gpt-4.1-mini", prices) == 5.0  # the dated snapshot's price
    assert price_per_1m("ft:gpt-4o-mini-2024-07-18:acme::abc123", prices) == 3.0
    assert price_per_1m("gpt-4.1-mini-2099-01-01", prices) == 5.0


def test_config_accepts_the_new_fields_and_forbids_unknown_ones() -> None:
    cfg = apply_overrides(FtopsConfig(), {"training.backend.kind": "openai", "training.backend.max_cost_usd": 5})
    assert isinstance(cfg.training.backend, OpenAIBackend) and cfg.training.backend.max_cost_usd == 5
    assert cfg.training.backend.timeout_hours == 24
    with pytest.raises(ValueError, match="max_cost"):
        OpenAIBackend(max_cost=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        OpenAIBackend(suffix="x" * 65)


def test_rows_are_checked_before_upload() -> None:
    with pytest.raises(ValueError, match="row 1: the last message must be the assistant"):
        to_training_jsonl([rows(1)[0], {"messages": [{"role": "user", "content": "q"}]}])


# -- secrets -------------------------------------------------------------------------------------------------
def test_api_key_is_sent_but_never_logged(server, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # the openai and httpx loggers too
    c = make_client(API_KEY, server.base_url, max_retries=2)
    server.fail_next(1, 429)
    server.lose_create_response = True
    job_id = submit_job(c, train_rows=rows(), validation_rows=rows(), backend=BACKEND, idempotency_key="k",
                        retry_delay_s=0.01)  # fmt: skip
    server.fail_next_job = True
    failed = submit_job(c, train_rows=rows(), validation_rows=None, backend=BACKEND, idempotency_key="k2")
    for jid in (job_id, failed):
        status, _ = poll_until_done(c, jid)
    with pytest.raises(FineTuneJobFailed) as info:
        raise_for_terminal_failure(status)
    c.close()
    assert server.api_keys_seen and set(server.api_keys_seen) == {API_KEY}
    assert server.job(job_id)["validation_file"]
    assert "Retrying request" in caplog.text or "retry" in caplog.text.lower()  # the debug logs were captured
    assert API_KEY not in caplog.text and API_KEY not in str(info.value)
    assert API_KEY[-12:] not in caplog.text


def test_importing_the_module_does_not_import_openai() -> None:
    import subprocess
    import sys

    code = "import sys, ftops.training.openai_jobs, ftops.training.openai_cost, ftops.core.openai_api; assert 'openai' not in sys.modules, 'openai imported'"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    assert time.perf_counter() - started < 10


# -- no key from the environment -------------------------------------------------------------------------------
def test_an_empty_key_is_an_error_and_OPENAI_API_KEY_is_never_used(server, monkeypatch) -> None:  # noqa: N802
    """The worker's OPENAI_API_KEY (here even the right key) must not stand in for a connection's missing password."""
    import asyncio

    from ftops.core.openai_api import make_async_client
    from ftops_airflow.common import async_openai_client, openai_client

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_NOKEY", json.dumps({"conn_type": "openai", "host": server.base_url}))
    for make in (make_client, make_async_client):
        for empty in ("", None, "  "):
            with pytest.raises(APIRequestError, match="no API key in the settings"):
                make(empty, server.base_url)  # type: ignore[arg-type]
    with pytest.raises(APIRequestError, match="no API key in the password of Airflow connection 'openai_nokey'"):
        openai_client("openai_nokey")
    with pytest.raises(APIRequestError, match="'openai_nokey'.*OPENAI_API_KEY from the environment is never used"):
        asyncio.run(async_openai_client("openai_nokey"))
    assert server.api_keys_seen == []  # no request went out with the environment's key


# -- the deferrable wait (Airflow glue: ftops_airflow.openai_wait) ---------------------------------------------------
CONN = "openai_ft_test"


@pytest.fixture
def conn(server, monkeypatch) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}",
                       json.dumps({"conn_type": "openai", "host": server.base_url, "password": API_KEY}))  # fmt: skip
    return CONN


def run_trigger(trigger) -> list[dict]:
    """Every event the trigger's ``run()`` yields (the triggerer stops after the first; there must be one)."""
    import asyncio

    async def collect() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def trigger_for(job_id: str, conn_id: str = CONN, **kw):
    from ftops_airflow.openai_wait import FineTuneJobTrigger

    kw = {"poll_seconds": 0.01, "timeout_hours": 1.0, **kw}
    return FineTuneJobTrigger(conn_id=conn_id, job_id=job_id, **kw)


def logged_events(caplog, job_id: str) -> list[str]:
    return [r.getMessage().split(" UTC ", 1)[1] for r in caplog.records if r.getMessage().startswith(f"[{job_id}] ")]


def test_trigger_waits_for_success_and_streams_each_event_once(server, client, conn, caplog) -> None:
    caplog.set_level(logging.INFO)
    job_id = submit(client)
    first = poll_job(client, job_id)  # an earlier look (e.g. a previous attempt) logged the first events
    caplog.clear()
    (event,) = run_trigger(trigger_for(job_id, after_event_id=first.last_event_id))
    assert event["outcome"] == "done" and event["status"] == "succeeded" and not event["timed_out"]
    assert event["fine_tuned_model"] == server.job(job_id)["fine_tuned_model"]
    streamed = logged_events(caplog, job_id)
    assert [e.message for e in first.events] + streamed == [e["message"] for e in reversed(
        server.list_events(job_id, {"limit": "100"})["data"])]  # fmt: skip
    assert len(streamed) == len(set(streamed)) == event["events_logged"] == 8 - len(first.events)
    assert event["last_event_id"] == server.list_events(job_id, {"limit": "1"})["data"][0]["id"]
    assert server.calls["GET /v1/fine_tuning/jobs/{id}"] >= 4  # it polled the job to the end
    assert API_KEY not in caplog.text


def test_trigger_reports_a_failed_job_and_the_task_raises_the_api_message(server, client, conn, caplog) -> None:
    from ftops_airflow.openai_wait import WaitForFineTuneOperator

    caplog.set_level(logging.INFO)
    server.fail_next_job = True
    job_id = submit(client)
    (event,) = run_trigger(trigger_for(job_id))
    assert event["outcome"] == "done" and event["status"] == "failed" and event["fine_tuned_model"] is None
    assert server.failure_error["message"] in logged_events(caplog, job_id)[-1]  # the API's message is in the log
    # the task records and raises it on resume (poll_candidate needs MLflow: covered end to end); an error event:
    wait = WaitForFineTuneOperator(task_id="w", config=_openai_config(), trained=_trained(job_id))
    with pytest.raises(APIRequestError, match=f"waiting for fine-tuning job {job_id}: HTTP 404"):
        wait.execute_complete({}, {"outcome": "error", "error": "HTTP 404: gone", "retryable": False})
    with pytest.raises(RetryableAPIError, match="unavailable"):
        wait.execute_complete({}, {"outcome": "error", "error": "API unavailable", "retryable": True})


def test_trigger_times_out_from_the_jobs_creation_without_cancelling_it_itself(server, client, conn) -> None:
    job_id = submit(client)
    server.age_job(job_id, 2 * 3600)  # created two hours ago
    started = time.perf_counter()
    (event,) = run_trigger(trigger_for(job_id, poll_seconds=30, timeout_hours=1.5))
    assert event["outcome"] == "timeout" and event["timed_out"] and event["status"] not in ("succeeded", "failed")
    assert 1.99 < event["waited_hours"] < 2.1  # the fake's clock runs a few seconds ahead
    assert time.perf_counter() - started < 5  # noticed at the first poll, not after poll_seconds
    assert server.job(job_id)["status"] != "cancelled"  # cancelling is the resumed task's part (poll_candidate)


def test_trigger_shortens_its_last_sleep_to_meet_the_deadline(server, client, conn) -> None:
    server.running_polls = 10_000  # never finishes
    job_id = submit(client)
    server.age_job(job_id, 3600 - 1)  # one second left of a one-hour timeout
    started = time.perf_counter()
    (event,) = run_trigger(trigger_for(job_id, poll_seconds=60, timeout_hours=1.0))
    assert event["outcome"] == "timeout" and time.perf_counter() - started < 10


def test_trigger_turns_api_refusals_into_an_error_event(server, client, conn, monkeypatch) -> None:
    (unknown,) = run_trigger(trigger_for("ftjob-missing"))
    assert unknown["outcome"] == "error" and not unknown["retryable"] and "HTTP 404" in unknown["error"]
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_NOKEY", json.dumps({"conn_type": "openai", "host": server.base_url}))
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    (nokey,) = run_trigger(trigger_for(submit(client), conn_id="openai_nokey"))
    assert nokey["outcome"] == "error" and not nokey["retryable"] and "'openai_nokey'" in nokey["error"]
    (missing,) = run_trigger(trigger_for("ftjob-x", conn_id="openai_not_defined"))
    assert missing["outcome"] == "error" and "openai_not_defined" in missing["error"]


def test_wait_rides_out_brief_outages_and_gives_up_after_a_run_of_them(server, client) -> None:
    import asyncio

    from ftops.core.openai_api import make_async_client
    from ftops.training.openai_watch import wait_for_job

    job_id = submit(client)

    async def wait(**kw):
        async with make_async_client(API_KEY, server.base_url, max_retries=0) as c:
            return await wait_for_job(c, job_id, poll_seconds=0.01, timeout_hours=1, **kw)

    server.fail_next(2, 503)
    assert asyncio.run(wait(max_consecutive_errors=3)).status == "succeeded"
    server.fail_next(3, 503, route="GET /v1/fine_tuning/jobs/{id}")
    with pytest.raises(RetryableAPIError, match="HTTP 503"):
        asyncio.run(wait(max_consecutive_errors=3))


def _openai_config(**backend) -> dict:
    cfg = apply_overrides(FtopsConfig(), {"training.backend.kind": "openai",
                                          **{f"training.backend.{k}": v for k, v in backend.items()}})  # fmt: skip
    return cfg.model_dump(mode="json")


def _trained(job_id: str) -> dict:
    return {"run_id": "r0", "job_id": job_id, "dataset_version": "dataset/x/v1", "backend": "openai"}


def test_the_operator_defers_with_settings_from_the_config_and_no_key_in_the_trigger_kwargs(conn, monkeypatch) -> None:
    import importlib

    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.serde import serialize

    import ftops.pipeline.finetune_api as finetune_api
    from ftops_airflow.openai_wait import FineTuneJobTrigger, WaitForFineTuneOperator

    monkeypatch.setattr(finetune_api, "event_cursor", lambda run_id: "ftevent-cursor")  # MLflow's tag
    config = _openai_config(conn_id=CONN, poll_seconds=7, timeout_hours=3)
    wait = WaitForFineTuneOperator(task_id="wait_for_model", config=config, trained=_trained("ftjob-1"))
    with pytest.raises(TaskDeferred) as info:
        wait.execute({})
    trigger, method = info.value.trigger, info.value.method_name
    assert method == "execute_complete" and isinstance(trigger, FineTuneJobTrigger)
    classpath, kwargs = trigger.serialize()
    assert kwargs == {"conn_id": CONN, "job_id": "ftjob-1", "poll_seconds": 7, "timeout_hours": 3,
                      "after_event_id": "ftevent-cursor"}  # fmt: skip
    stored = json.dumps(serialize(kwargs))  # what the task hands the triggerer, and the metadata DB keeps
    assert API_KEY not in stored and API_KEY[-12:] not in stored and "password" not in stored
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (classpath, kwargs)
    # a local model passes straight through, without deferring
    local = {"run_id": "r1", "backend": "huggingface", "dataset_version": "dataset/x/v1"}
    assert WaitForFineTuneOperator(task_id="w2", config=config, trained=local).execute({}) == local


def test_an_empty_base_url_means_openai_never_the_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key goes only where the connection says: OPENAI_BASE_URL in a worker's environment is ignored."""
    from ftops.core.openai_api import DEFAULT_BASE_URL, make_async_client, make_client

    monkeypatch.setenv("OPENAI_BASE_URL", "http://attacker.invalid/v1")
    assert str(make_client("sk-test", None).base_url).rstrip("/") == DEFAULT_BASE_URL
    assert str(make_async_client("sk-test", "").base_url).rstrip("/") == DEFAULT_BASE_URL
    assert str(make_client("sk-test", "http://127.0.0.1:9/v1").base_url).rstrip("/") == "http://127.0.0.1:9/v1"
