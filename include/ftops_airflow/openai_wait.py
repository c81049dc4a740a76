"""Waiting for an OpenAI-compatible fine-tuning job without holding a worker: a deferrable operator and its trigger.

:class:`WaitForFineTuneOperator` passes a Hugging Face training result straight through. For an API job it
defers to :class:`FineTuneJobTrigger`, which runs in the triggerer: it polls the job with the async client
every ``poll_seconds`` (:func:`ftops.training.openai_watch.wait_for_job`), logs the job's new events as they
arrive, and fires once the job is terminal or older than ``timeout_hours`` (both from the run's config
snapshot). The task then resumes on a worker, once: it records the outcome on the candidate's MLflow run
(:func:`ftops.pipeline.finetune_api.poll_candidate`), cancels a job that timed out, and fails with the API's
message if the job did not succeed.

The trigger's arguments are written to the metadata database, so they hold the connection id, never the key:
the trigger reads the connection itself (``BaseHook.aget_connection``) when it starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from ftops.core.config import OpenAIBackend
from ftops_airflow.common import async_openai_client, openai_client, snapshot


class FineTuneJobTrigger(BaseTrigger):
    """Fires when a fine-tuning job is terminal, has timed out, or cannot be polled.

    Args:
        conn_id: Airflow connection of the API (key = password, base URL = host); read when the trigger runs.
        job_id: The job.
        poll_seconds: Seconds between polls.
        timeout_hours: How long the job may take, counted from its creation.
        after_event_id: Events up to this one were logged before (the candidate run's cursor).

    The event's payload is :class:`ftops.training.openai_watch.WaitOutcome` as a dict with ``outcome``
    ``"done"`` or ``"timeout"``; or ``{"outcome": "error", "error": ..., "retryable": ...}`` when the API
    refused the polls (unknown job, bad key, no key) or stayed unavailable.
    """

    def __init__(
        self, *, conn_id: str, job_id: str, poll_seconds: float, timeout_hours: float, after_event_id: str | None = None
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.job_id = job_id
        self.poll_seconds = poll_seconds
        self.timeout_hours = timeout_hours
        self.after_event_id = after_event_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "conn_id": self.conn_id,
            "job_id": self.job_id,
            "poll_seconds": self.poll_seconds,
            "timeout_hours": self.timeout_hours,
            "after_event_id": self.after_event_id,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from ftops.core.openai_api import APIRequestError, RetryableAPIError
        from ftops.training.openai_watch import wait_for_job

        try:
            async with await async_openai_client(self.conn_id) as client:
                outcome = await wait_for_job(client, self.job_id, poll_seconds=self.poll_seconds,
                                             timeout_hours=self.timeout_hours,
                                             after_event_id=self.after_event_id)  # fmt: skip
        except (APIRequestError, RetryableAPIError, AirflowNotFoundException) as exc:
            yield TriggerEvent({"outcome": "error", "job_id": self.job_id, "error": str(exc),
                                "retryable": isinstance(exc, RetryableAPIError)})  # fmt: skip
            return
        yield TriggerEvent({"outcome": "timeout" if outcome.timed_out else "done", **outcome.as_dict()})


class WaitForFineTuneOperator(BaseOperator):
    """Hand on ``train_candidate``'s result once the model exists: at once for a local model, after the
    fine-tuning job for an API model (deferred to :class:`FineTuneJobTrigger` meanwhile).

    Args:
        config: The run's config snapshot (``resolve_run_config``'s XCom).
        trained: ``train_candidate``'s XCom: ``run_id``, ``backend``, and ``job_id`` for the API backend.

    Returns (XCom):
        ``trained``, plus ``fine_tuned_model`` for an API job.

    Raises:
        FineTuneJobFailed: The job failed, was cancelled or timed out (then it is cancelled).
        APIRequestError: The API refused the polls (unknown job, refused or missing key).
        RetryableAPIError: The API stayed unavailable (the task's retries wait again).
    """

    template_fields = ("config", "trained")
    ui_color = "#e8f0fe"

    def __init__(self, *, config: Any, trained: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.trained = trained

    def _backend(self) -> OpenAIBackend:
        backend = snapshot(self.config).training.backend
        if not isinstance(backend, OpenAIBackend):
            raise ValueError(
                f"training {self.trained['run_id']} used the openai backend, the config says {backend.kind!r}"
            )
        return backend

    def execute(self, context: Any) -> dict[str, Any]:
        if self.trained.get("backend") != "openai":  # trained in train_candidate itself
            return dict(self.trained)
        from ftops.pipeline.finetune_api import event_cursor

        self._wait(after_event_id=event_cursor(self.trained["run_id"]))

    def _wait(self, *, after_event_id: str | None) -> NoReturn:
        backend = self._backend()
        trigger = FineTuneJobTrigger(conn_id=backend.conn_id, job_id=self.trained["job_id"],
                                     poll_seconds=backend.poll_seconds, timeout_hours=backend.timeout_hours,
                                     after_event_id=after_event_id)  # fmt: skip
        self.log.info("Waiting for fine-tuning job %s in the triggerer (every %gs, at most %g h from its creation)",
                      self.trained["job_id"], backend.poll_seconds, backend.timeout_hours)  # fmt: skip
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger fired: record the outcome once and return the model, or fail."""
        from ftops.core.openai_api import APIRequestError, RetryableAPIError
        from ftops.pipeline.finetune_api import poll_candidate

        if event["outcome"] == "error":
            error = RetryableAPIError if event["retryable"] else APIRequestError
            raise error(f"waiting for fine-tuning job {self.trained['job_id']}: {event['error']}")
        backend = self._backend()
        model = poll_candidate(openai_client(backend.conn_id), self.trained["run_id"],
                               timeout_hours=backend.timeout_hours, after_event_id=event["last_event_id"])  # fmt: skip
        if model is None:  # not over and within the timeout (the trigger fired early): wait again
            self._wait(after_event_id=event["last_event_id"])
        return {**self.trained, "fine_tuned_model": model}
