"""The OpenAI-compatible backend through the real ``openai`` client against the local fake server."""

from __future__ import annotations

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
    text, latency_ms, tokens = learned
    assert latency_ms > 0 and tokens > 0


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
    import json

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
