"""The ``ftops_finetune`` steps for the OpenAI-compatible backend: submit, poll, record.

Each step reads and writes durable state only: the job lives on the API (found again by its idempotency
key), and the MLflow run of the candidate holds the job id, the event cursor and, once the job is over, its
status, its events and the fine-tuned model id. So a retried or resumed task, on any worker, carries on where
the last one stopped. The waiting in between is a deferrable trigger's
(:func:`ftops.training.openai_watch.wait_for_job`); :func:`poll_candidate` records what it saw.
The API key comes from the caller (the Airflow connection) and is never logged, tagged or returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig, OpenAIBackend
from ftops.registry import models as registry

if TYPE_CHECKING:
    import openai


log = logging.getLogger(__name__)
JOB_TAG = "openai.job_id"
CURSOR_TAG = "openai.last_event_id"
MODEL_TAG = "openai.fine_tuned_model"


def _backend(cfg: FtopsConfig) -> OpenAIBackend:
    backend = cfg.training.backend
    if not isinstance(backend, OpenAIBackend):
        raise ValueError(f"training.backend.kind is {backend.kind!r}, not 'openai'")
    return backend


def submit_candidate(
    client: openai.OpenAI, cfg: FtopsConfig, task_type: str, dataset: str | None, *, run_key: str
) -> dict[str, Any]:
    """Start (or find again) the fine-tuning job of one candidate and record it as an MLflow run.

    About ``validation_share`` of the train split (by prompt hash, see :func:`ftops.training.data.split_validation`)
    is uploaded as the job's validation file, so the API reports validation loss; the test split stays the gate's.

    Retry-safe twice over: a finished MLflow run with this run key returns its job at once, and the job's
    idempotency key (the run key) makes :func:`ftops.training.openai_jobs.submit_job` find a job created by an attempt
    that crashed before recording it; that attempt's unfinished MLflow run is continued, not duplicated.

    Returns:
        ``run_id``, ``job_id``, ``dataset_version`` and ``backend``.

    Raises:
        BudgetExceededError: The cost estimate is above ``max_cost_usd`` (nothing is uploaded).
        APIRequestError: The API refused the request (its message is in the error).
    """
    import mlflow

    from ftops.pipeline.common import dataset_registry
    from ftops.pipeline.finetune import candidate_run, refuse_pre_erasure
    from ftops.training.data import split_validation
    from ftops.training.openai_cost import estimate_cost
    from ftops.training.openai_jobs import submit_job

    backend = _backend(cfg)
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, dataset)
    refuse_pre_erasure(datasets, version)
    existing = registry.find_run(task_type, run_key)
    if existing:
        job_id = registry.client().get_run(existing).data.tags[JOB_TAG]
        log.info("Run key %s already submitted job %s (MLflow run %s)", run_key, job_id, existing)
        return {"run_id": existing, "job_id": job_id, "dataset_version": version.tag, "backend": "openai"}
    train = datasets.read(version, "train")
    if len(train) < cfg.training.min_train_examples:
        raise ValueError(f"{version.tag} has only {len(train)} training examples "
                         f"(training.min_train_examples is {cfg.training.min_train_examples})")  # fmt: skip
    split = split_validation(train, backend.validation_share)  # uploaded as the job's validation file
    estimate = estimate_cost(split.train, backend)
    params = backend.model_dump(mode="json", exclude={"price_per_1m_training_tokens"}) | {
        "train_examples": len(split.train), "validation_examples": len(split.validation)}  # fmt: skip
    if split.note:
        params["validation"] = f"off: {split.note}"
    with candidate_run(task_type, run_key, version, datasets.url,
                       run_name=f"{task_type}-{version.tag.rsplit('/', 1)[-1]}-api",
                       tags={"backend": "openai", "base_model": backend.base_model}, params=params) as (run, _):  # fmt: skip
        mlflow.log_metrics({"estimated_cost_usd": estimate.usd, "estimated_training_tokens": estimate.billable_tokens})
        job_id = submit_job(client, train_rows=split.train, validation_rows=split.validation or None, backend=backend,
                            idempotency_key=run_key,
                            metadata={"task_type": task_type, "dataset_version": version.tag})  # fmt: skip
        mlflow.set_tag(JOB_TAG, job_id)
    log.info(
        "Submitted fine-tuning job %s for %s on %s (estimated $%.2f)", job_id, task_type, version.tag, estimate.usd
    )
    return {"run_id": run.info.run_id, "job_id": job_id, "dataset_version": version.tag, "backend": "openai"}


def event_cursor(run_id: str) -> str | None:
    """The last job event already logged for the candidate's MLflow run (None: none yet)."""
    return registry.client().get_run(run_id).data.tags.get(CURSOR_TAG)


def poll_candidate(
    client: openai.OpenAI, run_id: str, *, timeout_hours: float = 24, after_event_id: str | None = None
) -> str | None:
    """Look at the candidate's job once and record it: new events logged, and once the job is over, its
    status, events and fine-tuned model id on the MLflow run.

    The event cursor is kept on the MLflow run, so each event is logged once across polls and retries.

    Args:
        client: The API client.
        run_id: The candidate's MLflow run (it holds the job id).
        timeout_hours: How long the job may take, counted from its creation.
        after_event_id: Events up to this one are already logged (by the trigger that waited); default the
            cursor on the run.

    Returns:
        The fine-tuned model id when the job succeeded; None while it runs within the timeout.

    Raises:
        FineTuneJobFailed: The job ended ``failed`` or ``cancelled`` (the API's message is in the error), or
            ran longer than ``timeout_hours`` since its creation (it is cancelled first).
    """
    from ftops.training.openai_jobs import FineTuneJobFailed, cancel_job, poll_job, raise_for_terminal_failure

    c = registry.client()
    run = c.get_run(run_id)
    tags = run.data.tags
    cursor = after_event_id or tags.get(CURSOR_TAG)
    status = poll_job(client, tags[JOB_TAG], after_event_id=cursor)
    if status.last_event_id and status.last_event_id != tags.get(CURSOR_TAG):
        c.set_tag(run_id, CURSOR_TAG, status.last_event_id)
    if not status.done:
        started_ms = status.created_at * 1000 if status.created_at is not None else run.info.start_time
        waited_h = (time.time() * 1000 - started_ms) / 3_600_000
        if waited_h > timeout_hours:
            cancel_job(client, status.job_id)
            _record_end(client, run_id, status.job_id, "cancelled (timeout)")
            raise FineTuneJobFailed(f"fine-tuning job {status.job_id} still {status.status} after {waited_h:.1f} h "
                                    f"(timeout_hours {timeout_hours:g}): cancelled")  # fmt: skip
        log.info("Job %s is %s", status.job_id, status.status)
        return None
    _record_end(client, run_id, status.job_id, status.status)
    raise_for_terminal_failure(status)
    model = str(status.fine_tuned_model)
    c.set_tag(run_id, MODEL_TAG, model)
    if status.trained_tokens is not None:
        c.log_metric(run_id, "trained_tokens", status.trained_tokens)
    c.log_dict(run_id, {"fine_tuned_model": model, "job_id": status.job_id}, "model/api_model.json")
    log.info("Job %s succeeded: %s", status.job_id, model)
    return model


def _record_end(client: openai.OpenAI, run_id: str, job_id: str, status: str) -> None:
    """Tag the run with how the job ended and keep all its events as an artifact (``openai/events.json``)."""
    from ftops.training.openai_jobs import job_events

    c = registry.client()
    c.set_tag(run_id, "openai.status", status)
    events = [asdict(e) for e in job_events(client, job_id)]
    c.log_dict(run_id, {"job_id": job_id, "status": status, "events": events}, "openai/events.json")
