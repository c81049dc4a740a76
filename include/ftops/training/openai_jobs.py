"""Fine-tuning through an OpenAI-compatible API, as short retry-safe steps for Airflow tasks.

The DAG wires them as: a task that estimates the cost, refuses it above the budget and submits the job
(:func:`submit_job`); a deferrable wait whose trigger polls the job with the async client
(:func:`ftops.training.openai_watch.wait_for_job`: no worker slot is held while the job trains), after which
the task calls :func:`poll_job` once more and :func:`raise_for_terminal_failure`; then evaluation with
:func:`chat_complete`.

Retry safety. Airflow runs a task at least once, a retry clears XCom, and the ``openai`` client retries a
request that timed out or got a 5xx, though the server may already have acted on it. So every job carries an
idempotency key in its metadata (``ftops_key``), and :func:`submit_job` looks the key up before it creates
anything; the create itself is sent with the client's own retries off, and after a failed create the key is
looked up again before the create is repeated. A retried task therefore finds its job instead of training twice.

Errors. :func:`api_errors` (used by every function here) turns the client's exceptions into two kinds:
:class:`RetryableAPIError` (a ``ConnectionError``: rate limits, 408/409, 5xx, timeouts, connection failures;
let Airflow retry with backoff) and :class:`APIRequestError` (a ``ValueError``: the request is wrong, the model
does not exist, the key is refused; retrying cannot help). Both carry the API's own message. A job that ends
``failed`` or ``cancelled`` raises :class:`FineTuneJobFailed` (a ``ValueError``) with the job's error.

Cost. :func:`estimate_cost` counts the training examples' tokens (by default ~4 characters per token, the
usual rule for English; pass ``count_tokens`` to use a real tokenizer such as tiktoken) × epochs × the price
per 1M training tokens from the config's table; :func:`check_budget` refuses more than ``max_cost_usd``.

``openai`` is imported inside the functions (its import takes ~0.9 s), so importing this module is cheap and
opens no connection. The API key is given to the client and never logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ftops.core.config import OpenAIBackend
from ftops.core.openai_api import RetryableAPIError, api_errors
from ftops.training.openai_cost import check_budget, estimate_cost

if TYPE_CHECKING:
    import openai
    from openai.types.fine_tuning import FineTuningJob


log = logging.getLogger(__name__)
METADATA_KEY = "ftops_key"
"""Metadata entry of a fine-tuning job that holds the caller's idempotency key."""
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
FAILED_STATUSES = frozenset({"failed", "cancelled"})
_MESSAGE_KEYS = ("role", "content", "name", "weight")  # what a chat fine-tuning example's message may carry
_LOOKUP_LIMIT = 1000  # newest jobs scanned for a key when a server ignores the metadata filter
MAX_EVENTS = 1000  # newest events read in one poll
_EVENT_LEVELS = {"info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class FineTuneJobFailed(ValueError):
    """A fine-tuning job ended ``failed`` or ``cancelled``; retrying the poll cannot change that."""


# -- submitting ----------------------------------------------------------------------------------------------
def to_training_jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Chat-format JSONL for the fine-tuning API: only ``messages``, each with role/content (name, weight).

    Dataset rows may carry other fields (ids, hashes); the API rejects or ignores them, so they are dropped.

    Raises:
        ValueError: A row has no messages or does not end with an assistant turn.
    """
    lines = []
    for n, row in enumerate(rows):
        messages = row.get("messages")
        if not isinstance(messages, Sequence) or not messages or not isinstance(messages[-1], Mapping):
            raise ValueError(f"row {n}: expected {{'messages': [...]}} with at least one message")
        if messages[-1].get("role") != "assistant":
            raise ValueError(f"row {n}: the last message must be the assistant's reply to learn")
        clean = [{k: m[k] for k in _MESSAGE_KEYS if k in m} for m in messages]
        lines.append(json.dumps({"messages": clean}, ensure_ascii=False) + "\n")
    return "".join(lines).encode()


def find_job(client: openai.OpenAI, idempotency_key: str, *, include_failed: bool = False) -> FineTuningJob | None:
    """The newest job whose metadata carries ``idempotency_key``.

    Asks the server to filter by metadata and also checks each job itself, since some OpenAI-compatible
    servers ignore the filter; then at most the newest 1 000 jobs are scanned.

    Args:
        client: The API client.
        idempotency_key: The value of the job's ``ftops_key`` metadata.
        include_failed: Also return a ``failed``/``cancelled`` job (by default those are skipped, so a new
            attempt can be created after a failure).

    Returns:
        The job, or None.
    """
    with api_errors("list fine-tuning jobs"):
        pages = client.fine_tuning.jobs.list(limit=100, metadata={METADATA_KEY: idempotency_key})
        for scanned, job in enumerate(pages, 1):
            if (job.metadata or {}).get(METADATA_KEY) == idempotency_key and (
                include_failed or job.status not in FAILED_STATUSES
            ):
                return job
            if scanned >= _LOOKUP_LIMIT:
                log.warning("no job with %s=%s among the newest %d jobs", METADATA_KEY, idempotency_key, scanned)
                break
    return None


def _upload(client: openai.OpenAI, content: bytes, name: str) -> str:
    with api_errors(f"upload {name}"):
        uploaded = client.files.create(file=(name, content, "application/jsonl"), purpose="fine-tune")
    log.info("uploaded %s as %s (%d bytes)", name, uploaded.id, len(content))
    return uploaded.id


def _retry_delay(exc: BaseException, attempt: int, fixed: float | None) -> float:
    """Seconds before another create: the fixed delay, the server's Retry-After, or 0.5 s × 2^attempt (≤ 8 s)."""
    if fixed is not None:
        return fixed
    response = getattr(exc.__cause__, "response", None)
    headers = getattr(response, "headers", None) or {}
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            delay = float(str(headers.get(header))) / divisor
        except ValueError:  # absent ("None") or an HTTP date: use the backoff
            continue
        if 0 <= delay <= 120:
            return delay
    return min(0.5 * 2**attempt, 8.0)


def submit_job(
    client: openai.OpenAI,
    *,
    train_rows: Sequence[Mapping[str, Any]],
    validation_rows: Sequence[Mapping[str, Any]] | None,
    backend: OpenAIBackend,
    idempotency_key: str,
    metadata: Mapping[str, str] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    retry_delay_s: float | None = None,
) -> str:
    """Start a fine-tuning job once per idempotency key, and return its id.

    Steps: look for a job with this key that has not failed (a retried task ends here); estimate the cost
    and refuse it above the budget; upload the training (and validation) JSONL; create the job with the key
    in its metadata. The create goes out with the client's own retries off: after a retryable failure the
    key is looked up again (the server may have created the job before the response was lost) and the
    create is repeated only if no job was found, up to ``client.max_retries`` more times.

    Args:
        client: From :func:`make_client`.
        train_rows: Chat-format training examples.
        validation_rows: Chat-format validation examples, or None.
        backend: Model, hyperparameters, suffix, prices and budget.
        idempotency_key: Stable across retries of one logical submission (e.g. run id + task type +
            dataset version); at most 512 characters.
        metadata: Other metadata for the job (at most 15 entries; string values).
        count_tokens: Tokenizer for the cost estimate (default ~4 characters per token).
        retry_delay_s: Fixed delay between creates; default the server's Retry-After or exponential backoff.

    Returns:
        The job id.

    Raises:
        BudgetExceededError: The estimate is above ``max_cost_usd``.
        ValueError: The model has no price, a row is malformed, or the key is too long.
        APIRequestError: The API refused a request (e.g. bad hyperparameters), with its message.
        RetryableAPIError: The API stayed unavailable; a retry of the task is safe.
    """
    if not idempotency_key or len(idempotency_key) > 512:
        raise ValueError("idempotency_key must be 1..512 characters (an OpenAI metadata value)")
    existing = find_job(client, idempotency_key)
    if existing is not None:
        log.info("job %s already exists for %s=%s (status %s): not creating another",
                 existing.id, METADATA_KEY, idempotency_key, existing.status)  # fmt: skip
        return existing.id

    estimate = estimate_cost(train_rows, backend, count_tokens=count_tokens)
    log.info("cost estimate for %s: %d examples, ~%d tokens × %d epochs at $%g/1M = $%.2f (budget $%g)",
             estimate.model, estimate.examples, estimate.tokens_per_epoch, estimate.n_epochs,
             estimate.usd_per_1m_tokens, estimate.usd, backend.max_cost_usd)  # fmt: skip
    check_budget(estimate, backend)

    training_file = _upload(client, to_training_jsonl(train_rows), "ftops-train.jsonl")
    validation_file = (
        _upload(client, to_training_jsonl(validation_rows), "ftops-validation.jsonl") if validation_rows else None
    )
    hyperparameters = {"n_epochs": backend.n_epochs, "batch_size": backend.batch_size,
                       "learning_rate_multiplier": backend.learning_rate_multiplier}  # fmt: skip
    request: dict[str, Any] = {
        "model": backend.base_model,
        "training_file": training_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "metadata": {**(metadata or {}), METADATA_KEY: idempotency_key},
    }
    if validation_file:
        request["validation_file"] = validation_file
    if backend.suffix:
        request["suffix"] = backend.suffix

    once = client.with_options(max_retries=0)  # a blind resend could create a second job
    attempts = client.max_retries + 1
    for attempt in range(attempts):
        try:
            with api_errors("create fine-tuning job"):
                job = once.fine_tuning.jobs.create(**request)
        except RetryableAPIError as exc:
            found = find_job(client, idempotency_key)
            if found is not None:
                log.warning("create failed (%s) but job %s exists: using it", exc, found.id)
                return found.id
            if attempt + 1 == attempts:
                raise
            delay = _retry_delay(exc, attempt, retry_delay_s)
            log.warning("create failed (%s) and no job exists yet: trying again in %.2fs (%d/%d)",
                        exc, delay, attempt + 1, attempts - 1)  # fmt: skip
            time.sleep(delay)
        else:
            log.info("created fine-tuning job %s on %s (%s=%s)", job.id, job.model, METADATA_KEY, idempotency_key)
            return job.id
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# -- polling -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobEvent:
    """One event of a fine-tuning job."""

    id: str
    created_at: int
    level: str
    message: str


@dataclass(frozen=True)
class JobStatus:
    """A fine-tuning job as one poll saw it (small, JSON-friendly for XCom via :meth:`as_dict`).

    Attributes:
        job_id: The job.
        status: validating_files, queued, running, succeeded, failed or cancelled.
        fine_tuned_model: The new model's name once succeeded.
        trained_tokens: Billable tokens once finished.
        error_code: The job's error code when it failed.
        error_message: The job's error message when it failed.
        events: Events newer than the poll's cursor, oldest first (already logged by :func:`poll_job`).
        last_event_id: The cursor for the next poll (the newest event seen, or the one passed in).
        last_event_at: Unix time of that event, or the ``since`` passed in.
        created_at: Unix time the job was created (on the server's clock): timeouts count from it.
    """

    job_id: str
    status: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    events: tuple[JobEvent, ...] = field(default_factory=tuple)
    last_event_id: str | None = None
    last_event_at: int | None = None
    created_at: int | None = None

    @property
    def done(self) -> bool:
        """The job reached a terminal status."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_of(event: Any) -> JobEvent:
    """A :class:`JobEvent` from the client's ``FineTuningJobEvent``."""
    return JobEvent(event.id, event.created_at, event.level, event.message)


def is_seen(event: JobEvent, after_event_id: str | None, since: int | None) -> bool:
    """Whether a poll with this cursor has already returned ``event`` (events come newest first)."""
    return event.id == after_event_id or (since is not None and event.created_at <= since)


def log_events(job_id: str, events: Sequence[JobEvent]) -> None:
    """Log events (oldest first) at their own level, with their UTC time."""
    for seen in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seen.created_at))
        log.log(_EVENT_LEVELS.get(seen.level, logging.INFO), "[%s] %s UTC %s", job_id, stamp, seen.message)


def status_of(
    job: FineTuningJob, new: Sequence[JobEvent], *, after_event_id: str | None, since: int | None
) -> JobStatus:
    """The :class:`JobStatus` of a retrieved job and the events (oldest first) read after it."""
    error = job.error
    return JobStatus(
        job_id=job.id, status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
        error_code=error.code if error else None, error_message=error.message if error else None, events=tuple(new),
        last_event_id=new[-1].id if new else after_event_id, last_event_at=new[-1].created_at if new else since,
        created_at=job.created_at,
    )  # fmt: skip


def poll_job(
    client: openai.OpenAI, job_id: str, *, after_event_id: str | None = None, since: int | None = None
) -> JobStatus:
    """Look at a job once: its status, and the events since the last poll (logged here, oldest first).

    The job is read before its events, so when it is seen finished its final events are included.

    Args:
        client: The API client.
        job_id: The job.
        after_event_id: Return only events newer than this one (the previous poll's ``last_event_id``).
        since: Return only events created after this Unix time (for a caller that keeps a time instead of
            an id).

    Returns:
        The status; ``done`` tells whether to stop polling. Call :func:`raise_for_terminal_failure` on it.

    Raises:
        APIRequestError: The job does not exist (404) or the key is refused.
        RetryableAPIError: The API is unavailable now.
    """
    with api_errors(f"retrieve fine-tuning job {job_id}"):
        job = client.fine_tuning.jobs.retrieve(job_id)
    new: list[JobEvent] = []
    with api_errors(f"list events of fine-tuning job {job_id}"):
        # The API lists events newest first; page back until the cursor.
        for raw in client.fine_tuning.jobs.list_events(job_id, limit=100):
            event = event_of(raw)
            if is_seen(event, after_event_id, since) or len(new) >= MAX_EVENTS:
                break
            new.append(event)
    new.reverse()
    log_events(job_id, new)
    status = status_of(job, new, after_event_id=after_event_id, since=since)
    log.info("job %s: %s%s", job.id, job.status, f" → {job.fine_tuned_model}" if job.fine_tuned_model else "")
    return status


def job_events(client: openai.OpenAI, job_id: str) -> list[JobEvent]:
    """The job's events, oldest first (the newest ``MAX_EVENTS`` of them), without logging them: a record.

    Raises:
        APIRequestError: The job does not exist (404) or the key is refused.
        RetryableAPIError: The API is unavailable now.
    """
    events: list[JobEvent] = []
    with api_errors(f"list events of fine-tuning job {job_id}"):
        for raw in client.fine_tuning.jobs.list_events(job_id, limit=100):
            if len(events) >= MAX_EVENTS:
                break
            events.append(event_of(raw))
    return events[::-1]


def raise_for_terminal_failure(status: JobStatus) -> None:
    """Raise when the job ended ``failed`` or ``cancelled``; do nothing otherwise.

    Raises:
        FineTuneJobFailed: With the API's error code and message.
    """
    if status.status == "failed":
        detail = f"{status.error_code}: {status.error_message}" if status.error_code else status.error_message
        raise FineTuneJobFailed(f"fine-tuning job {status.job_id} failed: {detail or 'no error given by the API'}")
    if status.status == "cancelled":
        raise FineTuneJobFailed(f"fine-tuning job {status.job_id} was cancelled")


def cancel_job(client: openai.OpenAI, job_id: str) -> str:
    """Cancel a job (e.g. when the wait times out) and return its status afterwards.

    Raises:
        APIRequestError: The job does not exist or has already finished.
        RetryableAPIError: The API is unavailable now.
    """
    with api_errors(f"cancel fine-tuning job {job_id}"):
        job = client.fine_tuning.jobs.cancel(job_id)
    log.warning("cancelled fine-tuning job %s (status %s)", job_id, job.status)
    return job.status
