"""Fine-tuning through an OpenAI-compatible API, as short retry-safe steps for Airflow tasks.

The DAG wires them as: a task that estimates the cost, refuses it above the budget and submits the job
(:func:`submit_job`), a sensor in reschedule mode that calls :func:`poll_job` once per poke (no worker slot is
held between pokes) and :func:`raise_for_terminal_failure`, then evaluation with :func:`chat_complete`.

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
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ftops.config import OpenAIBackend

if TYPE_CHECKING:
    import openai
    from openai.types.fine_tuning import FineTuningJob

log = logging.getLogger(__name__)

METADATA_KEY = "ftops_key"
"""Metadata entry of a fine-tuning job that holds the caller's idempotency key."""
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
FAILED_STATUSES = frozenset({"failed", "cancelled"})
CHARS_PER_TOKEN = 4
"""Characters per token in the default estimate (English prose; code and other scripts use more tokens)."""
# Per-message overhead of the chat format, as in OpenAI's token-counting recipe: each message costs its
# content plus ~3 framing tokens (+1 for a name), and each example ~3 more to prime the reply.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_TOKENS_PER_EXAMPLE = 3
_MESSAGE_KEYS = ("role", "content", "name", "weight")  # what a chat fine-tuning example's message may carry
_LOOKUP_LIMIT = 1000  # newest jobs scanned for a key when a server ignores the metadata filter
_MAX_EVENTS = 1000  # newest events read in one poll
_EVENT_LEVELS = {"info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


# -- errors --------------------------------------------------------------------------------------------------
class RetryableAPIError(ConnectionError):
    """The API could not answer now (rate limit, timeout, 5xx, no connection): retry later with backoff.

    Attributes:
        status_code: HTTP status, or None when no response came.
        code: The API's error code, when it gave one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class APIRequestError(ValueError):
    """The API refused the request (bad parameters, unknown model or job, rejected key): do not retry.

    Attributes:
        status_code: HTTP status, or None when the client refused before sending.
        code: The API's error code, when it gave one.
        param: The parameter the API blamed, when it named one.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.param = param


class FineTuneJobFailed(ValueError):
    """A fine-tuning job ended ``failed`` or ``cancelled``; retrying the poll cannot change that."""


class BudgetExceededError(ValueError):
    """The estimated training cost is above ``max_cost_usd``."""


_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def _api_message(exc: Exception) -> str:
    """The API's own message from an error body ``{"message": ...}``, else the client's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(getattr(exc, "message", None) or exc)


@contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Map the ``openai`` client's exceptions to :class:`RetryableAPIError` or :class:`APIRequestError`.

    Args:
        action: What was being done, for the message (``"create fine-tuning job"``).

    Raises:
        RetryableAPIError: 408, 409, 429, 5xx, a timeout or a connection failure.
        APIRequestError: Any other API error (400, 401, 403, 404, 422, an invalid client setting).
    """
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        status, message = exc.status_code, _api_message(exc)
        text = f"{action} failed: HTTP {status}" + (f" ({exc.code})" if exc.code else "") + f": {message}"
        if status in _RETRYABLE_STATUSES or status >= 500:
            raise RetryableAPIError(text, status_code=status, code=exc.code) from exc
        raise APIRequestError(text, status_code=status, code=exc.code, param=exc.param) from exc
    except openai.APITimeoutError as exc:
        raise RetryableAPIError(f"{action} failed: the request timed out") from exc
    except openai.APIConnectionError as exc:
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        raise RetryableAPIError(f"{action} failed: {exc.message}{cause}") from exc
    except openai.OpenAIError as exc:
        raise APIRequestError(f"{action} failed: {_api_message(exc)}") from exc


# -- client --------------------------------------------------------------------------------------------------
def make_client(
    api_key: str | None, base_url: str | None, *, max_retries: int = 3, timeout: float = 60
) -> openai.OpenAI:
    """An ``openai.OpenAI`` client for any OpenAI-compatible API.

    Args:
        api_key: The key (the Airflow connection's password); None falls back to ``OPENAI_API_KEY``.
        base_url: e.g. ``https://api.openai.com/v1`` (the connection's host); empty falls back to
            ``OPENAI_BASE_URL`` or OpenAI.
        max_retries: Retries the client makes by itself on 408/409/429/5xx and connection errors, with
            exponential backoff or the server's ``Retry-After``. :func:`submit_job` turns them off for the
            create and does its own look-up-then-retry instead.
        timeout: Seconds per request.

    Returns:
        The client (it holds the key; do not log it).

    Raises:
        APIRequestError: No key was given and ``OPENAI_API_KEY`` is not set.
    """
    import openai

    with api_errors("create OpenAI client"):
        client = openai.OpenAI(api_key=api_key or None, base_url=base_url or None, max_retries=max_retries,
                               timeout=timeout)  # fmt: skip
    log.info("OpenAI-compatible API at %s (max_retries=%d, timeout=%ss)", client.base_url, max_retries, timeout)
    return client


# -- cost ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostEstimate:
    """What training would cost, before it starts.

    Attributes:
        model: The base model priced.
        examples: Training examples.
        tokens_per_epoch: Estimated tokens in the training file.
        n_epochs: Epochs the job trains.
        billable_tokens: ``tokens_per_epoch × n_epochs`` (what OpenAI bills as trained tokens).
        usd_per_1m_tokens: The price used.
        usd: The estimate.
        method: How tokens were counted.
    """

    model: str
    examples: int
    tokens_per_epoch: int
    n_epochs: int
    billable_tokens: int
    usd_per_1m_tokens: float
    usd: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chars_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def count_example_tokens(rows: Sequence[Mapping[str, Any]], count_tokens: Callable[[str], int] | None = None) -> int:
    """Tokens in chat examples: each message's content and name plus the chat format's framing.

    Args:
        rows: ``{"messages": [{"role", "content"}, ...]}`` examples.
        count_tokens: Tokens of one string; default ``ceil(len / 4)``.

    Returns:
        The total over all rows.
    """
    count = count_tokens or _chars_tokens
    total = 0
    for row in rows:
        total += _TOKENS_PER_EXAMPLE
        for message in row["messages"]:
            total += _TOKENS_PER_MESSAGE + count(str(message.get("content") or ""))
            if message.get("name"):
                total += _TOKENS_PER_NAME + count(str(message["name"]))
    return total


_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def price_per_1m(model: str, prices: Mapping[str, float]) -> float:
    """The training price of ``model`` from the config's table.

    A fine-tuned model (``ft:<base>:...``, trained further) is priced as its base; a name with or without a
    snapshot date (``gpt-4.1-mini`` / ``gpt-4.1-mini-2025-04-14``) matches the other form when the table has
    one price for that family.

    Raises:
        ValueError: The table has no price for the model.
    """
    if model.startswith("ft:"):
        model = model.split(":")[1]
    if model in prices:
        return float(prices[model])
    family = _DATE_SUFFIX.sub("", model)
    found = {float(p) for name, p in prices.items() if _DATE_SUFFIX.sub("", name) == family}
    if len(found) == 1:
        return found.pop()
    raise ValueError(
        f"no training price for model {model!r} in training.backend.price_per_1m_training_tokens "
        f"(priced: {', '.join(sorted(prices)) or 'none'}); add it to the config to train this model"
    )


def estimate_cost(
    train_rows: Sequence[Mapping[str, Any]],
    backend: OpenAIBackend,
    *,
    count_tokens: Callable[[str], int] | None = None,
) -> CostEstimate:
    """Estimate the training cost: tokens of the training examples × epochs × the price per 1M tokens.

    Validation examples are not counted: OpenAI bills the trained tokens only (check for other services).

    Args:
        train_rows: Chat-format training examples.
        backend: Model, epochs and the price table.
        count_tokens: Tokens of one string; default ~4 characters per token.

    Returns:
        The estimate.

    Raises:
        ValueError: The model has no price in the table.
    """
    price = price_per_1m(backend.base_model, backend.price_per_1m_training_tokens)
    tokens = count_example_tokens(train_rows, count_tokens)
    billable = tokens * backend.n_epochs
    method = f"chars/{CHARS_PER_TOKEN}" if count_tokens is None else getattr(count_tokens, "__name__", "custom")
    return CostEstimate(model=backend.base_model, examples=len(train_rows), tokens_per_epoch=tokens,
                        n_epochs=backend.n_epochs, billable_tokens=billable, usd_per_1m_tokens=price,
                        usd=billable * price / 1_000_000, method=method)  # fmt: skip


def check_budget(estimate: CostEstimate, backend: OpenAIBackend) -> None:
    """Refuse a training run whose estimate is above ``backend.max_cost_usd``.

    Raises:
        BudgetExceededError: With the estimate and its arithmetic.
    """
    if estimate.usd > backend.max_cost_usd:
        raise BudgetExceededError(
            f"estimated ${estimate.usd:.2f} exceeds max_cost_usd ${backend.max_cost_usd:g}: "
            f"{estimate.tokens_per_epoch:,} tokens × {estimate.n_epochs} epochs at "
            f"${estimate.usd_per_1m_tokens:g}/1M for {estimate.model} ({estimate.method} estimate)"
        )


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

    @property
    def done(self) -> bool:
        """The job reached a terminal status."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            an id, e.g. a reschedule-mode sensor using its previous poke's time).

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
        for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
            if event.id == after_event_id or (since is not None and event.created_at <= since):
                break
            new.append(JobEvent(event.id, event.created_at, event.level, event.message))
            if len(new) >= _MAX_EVENTS:
                break
    new.reverse()
    for seen in new:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seen.created_at))
        log.log(_EVENT_LEVELS.get(seen.level, logging.INFO), "[%s] %s UTC %s", job_id, stamp, seen.message)
    error = job.error
    status = JobStatus(
        job_id=job.id, status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
        error_code=error.code if error else None, error_message=error.message if error else None, events=tuple(new),
        last_event_id=new[-1].id if new else after_event_id, last_event_at=new[-1].created_at if new else since,
    )  # fmt: skip
    log.info("job %s: %s%s", job.id, job.status, f" → {job.fine_tuned_model}" if job.fine_tuned_model else "")
    return status


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
    """Cancel a job (e.g. when the sensor times out) and return its status afterwards.

    Raises:
        APIRequestError: The job does not exist or has already finished.
        RetryableAPIError: The API is unavailable now.
    """
    with api_errors(f"cancel fine-tuning job {job_id}"):
        job = client.fine_tuning.jobs.cancel(job_id)
    log.warning("cancelled fine-tuning job %s (status %s)", job_id, job.status)
    return job.status


# -- evaluation ----------------------------------------------------------------------------------------------
class ChatReply(NamedTuple):
    """One chat completion: its text, wall time and token usage."""

    text: str
    latency_ms: float
    usage_tokens: int


def chat_complete(client: openai.OpenAI, model: str, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> ChatReply:
    """Ask ``model`` for one reply (for evaluating an API model).

    Args:
        client: The API client.
        model: A base or fine-tuned model name.
        messages: Chat turns to answer.
        **kwargs: Passed to ``chat.completions.create`` (``temperature=0``, ``max_tokens``...).

    Returns:
        ``(text, latency_ms, usage_tokens)``; usage is 0 when the server reports none.

    Raises:
        APIRequestError: Unknown model or bad request.
        RetryableAPIError: The API is unavailable now.
    """
    started = time.perf_counter()
    with api_errors(f"chat completion with {model}"):
        # plain role/content dicts are valid message params; the client's TypedDict union cannot see that
        turns = cast(Any, [dict(m) for m in messages])
        response = client.chat.completions.create(model=model, messages=turns, **kwargs)
    latency_ms = (time.perf_counter() - started) * 1000
    text = (response.choices[0].message.content or "") if response.choices else ""
    return ChatReply(text, latency_ms, response.usage.total_tokens if response.usage else 0)
