"""Waiting for a fine-tuning job with the async ``openai`` client, for a deferrable trigger.

:func:`wait_for_job` polls one job every ``poll_seconds`` until it is terminal or has run longer than
``timeout_hours`` since its creation, logging each of the job's events once, as they arrive. It runs on an
asyncio event loop (the Airflow triggerer), so thousands of waits share one process and no worker slot is
held while a job trains. It only watches: recording the outcome (MLflow tags, cancelling a job that timed
out) is the task's part when it resumes (:func:`ftops.pipeline.finetune_api.poll_candidate`).

``openai`` is imported by the caller that makes the client; this module imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ftops.core.openai_api import RetryableAPIError, api_errors
from ftops.training.openai_jobs import MAX_EVENTS, JobEvent, JobStatus, event_of, is_seen, log_events, status_of

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_ERRORS = 10
"""Polls in a row that may fail with a retryable error (beyond the client's own retries) before giving up."""


async def poll_job_async(client: openai.AsyncOpenAI, job_id: str, *, after_event_id: str | None = None) -> JobStatus:
    """:func:`ftops.training.openai_jobs.poll_job` with the async client: the job, then its new events (logged).

    Args:
        client: From :func:`ftops.core.openai_api.make_async_client`.
        job_id: The job.
        after_event_id: Return only events newer than this one (the previous poll's ``last_event_id``).

    Returns:
        The status, with the new events oldest first.

    Raises:
        APIRequestError: The job does not exist (404) or the key is refused.
        RetryableAPIError: The API is unavailable now.
    """
    with api_errors(f"retrieve fine-tuning job {job_id}"):
        job = await client.fine_tuning.jobs.retrieve(job_id)
    new: list[JobEvent] = []
    with api_errors(f"list events of fine-tuning job {job_id}"):
        async for raw in client.fine_tuning.jobs.list_events(job_id, limit=100):  # newest first
            event = event_of(raw)
            if is_seen(event, after_event_id, None) or len(new) >= MAX_EVENTS:
                break
            new.append(event)
    new.reverse()
    log_events(job_id, new)
    return status_of(job, new, after_event_id=after_event_id, since=None)


@dataclass(frozen=True)
class WaitOutcome:
    """How a wait ended (small JSON via :meth:`as_dict`, e.g. a trigger event's payload).

    Attributes:
        job_id: The job.
        status: Its last status seen: terminal, or still running when ``timed_out``.
        timed_out: The job ran longer than ``timeout_hours`` since its creation and is not finished.
        waited_hours: Hours from the job's creation to the last poll.
        last_event_id: The newest event logged (the cursor for whoever looks next).
        events_logged: Events logged during this wait.
        fine_tuned_model: The new model once succeeded.
    """

    job_id: str
    status: str
    timed_out: bool
    waited_hours: float
    last_event_id: str | None
    events_logged: int
    fine_tuned_model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def wait_for_job(
    client: openai.AsyncOpenAI,
    job_id: str,
    *,
    poll_seconds: float,
    timeout_hours: float,
    after_event_id: str | None = None,
    max_consecutive_errors: int = MAX_CONSECUTIVE_ERRORS,
) -> WaitOutcome:
    """Poll a job until it is terminal or older than ``timeout_hours``, logging each new event once.

    The timeout counts from the job's creation (as the server reports it), so a wait that is restarted
    (a triggerer moved, a task retried) keeps the same deadline. The last sleep before the deadline is
    shortened so the timeout is noticed on time. A poll that fails with a retryable error (the client has
    already retried it) is logged and tried again at the next interval.

    Args:
        client: From :func:`ftops.core.openai_api.make_async_client`.
        job_id: The job.
        poll_seconds: Seconds between polls.
        timeout_hours: How long the job may take from its creation.
        after_event_id: Events up to this one were already logged (a previous wait's cursor).
        max_consecutive_errors: Retryable failures in a row before giving up.

    Returns:
        The outcome; ``timed_out`` or a terminal ``status``. Failure is not raised here: the caller records
        and raises it (:func:`ftops.training.openai_jobs.raise_for_terminal_failure`).

    Raises:
        APIRequestError: The job does not exist or the key is refused (at once).
        RetryableAPIError: The API failed ``max_consecutive_errors`` polls in a row.
    """
    cursor, logged, errors, last_status = after_event_id, 0, 0, None
    while True:
        try:
            status = await poll_job_async(client, job_id, after_event_id=cursor)
        except RetryableAPIError as exc:
            errors += 1
            if errors >= max_consecutive_errors:
                raise
            log.warning("polling job %s failed (%s): trying again in %gs (%d/%d)",
                        job_id, exc, poll_seconds, errors, max_consecutive_errors - 1)  # fmt: skip
            await asyncio.sleep(poll_seconds)
            continue
        errors, cursor, logged = 0, status.last_event_id, logged + len(status.events)
        if status.status != last_status:
            log.info("job %s: %s", job_id, status.status)
            last_status = status.status
        waited_s = time.time() - status.created_at if status.created_at is not None else 0.0
        timed_out = not status.done and waited_s > timeout_hours * 3600
        if status.done or timed_out:
            if timed_out:
                log.warning("job %s still %s after %.2f h (timeout_hours %g)",
                            job_id, status.status, waited_s / 3600, timeout_hours)  # fmt: skip
            return WaitOutcome(job_id=job_id, status=status.status, timed_out=timed_out, waited_hours=waited_s / 3600,
                               last_event_id=cursor, events_logged=logged,
                               fine_tuned_model=status.fine_tuned_model)  # fmt: skip
        left_s = timeout_hours * 3600 - waited_s
        await asyncio.sleep(min(poll_seconds, max(left_s, 0.0) + 0.5))
