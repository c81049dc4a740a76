"""``ftops status`` and the MCP ``status`` tool: what FT-Ops is doing now, from its three sources.

* **Airflow's REST API**: the ``ftops_finetune`` runs queued or running (the active fine-tunes, with the task
  type, dataset version and reason of their conf) and those that ended in the last ``days`` (recent
  completions, success rate, average run time).
* **The MLflow registry**: each active fine-tune's training run (found by its run key, ``<dag_run_id>/<task
  type>``) with progress and ETA from the metrics it logs by step; per task type the ``champion`` and
  ``canary`` versions, their gate metrics against the baseline and the yardstick each was measured on
  (:mod:`ftops.registry.yardstick`), the canary's share and ramp step, and every version's accuracy on one
  eval-set version (:func:`ftops.pipeline.comparison.compare_versions`).
* **The warehouse**: live metrics of the served versions and the latest decisions.

Each source is read on its own: one that cannot be reached is reported in ``problems`` (one line for people)
and the rest is still collected, so the dashboard shows what it can and says what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ftops.core.airflow_api import AirflowAPI, AirflowAPIError, AirflowUnavailableError
from ftops.core.config import FtopsConfig
from ftops.core.names import is_task_type
from ftops.pipeline.common import dataset_registry, json_safe, parse_time, served_model_version
from ftops.pipeline.comparison import compare_versions
from ftops.pipeline.operations import cost_reader, cost_summary, redact
from ftops.registry import models as registry
from ftops.registry.yardstick import yardstick

if TYPE_CHECKING:
    import sqlalchemy as sa
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
FINETUNE_DAG = "ftops_finetune"
LIVE_WINDOW = timedelta(hours=24)  # a champion without a canary: what its users saw in the last day


def collect_status(
    cfg: FtopsConfig,
    engine: sa.Engine,
    airflow: AirflowAPI,
    *,
    days: int = 7,
    decisions: int = 10,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the dashboard shows, as strict JSON.

    Args:
        cfg: The config (canary ramp, log table, dataset registry).
        engine: The warehouse.
        airflow: The REST API client.
        days: How far back "recent completions" go.
        decisions: How many of the latest decisions to show.
        now: The time to measure ages and ETAs from (default: now).

    Returns:
        ``generated_at``; ``sources`` (name -> where it was read); ``problems`` (source -> one line, only for
        sources that could not be read); ``complete`` (no problems); ``active_finetunes``; ``recent`` (runs,
        counts, success rate, average duration); ``models`` (per task type); ``decisions``.
    """
    now = now or datetime.now(UTC)
    problems: dict[str, str] = {}
    status: dict[str, Any] = {
        "generated_at": now.isoformat(),
        "sources": {"airflow": airflow.url, "registry": _hide(registry.tracking_uri()),
                    "warehouse": engine.url.render_as_string(hide_password=True)},  # fmt: skip
    }
    active: list[dict[str, Any]] | None = None
    ended: list[dict[str, Any]] | None = None
    try:
        active = airflow.dag_runs(FINETUNE_DAG, states=("queued", "running"), limit=50)
        ended = airflow.dag_runs(FINETUNE_DAG, states=("success", "failed"), end_date_gte=now - timedelta(days=days))
    except (AirflowUnavailableError, AirflowAPIError) as exc:
        problems["airflow"] = str(exc)
    warehouse_error = _check_warehouse(engine)
    if warehouse_error:
        problems["warehouse"] = warehouse_error
    live = None if warehouse_error else _live_reader(engine, cfg)
    cost = None if live is None else cost_reader(engine, cfg)
    client: MlflowClient | None = None
    try:
        client = registry.client()
        status["models"] = [_models(cfg, t, live, now, cost) for t in registry.registered_task_types()]
    except registry.RegistryUnavailableError as exc:
        problems["registry"] = one_line(f"MLflow registry: unreachable: {exc}")
        client, status["models"] = None, None
    try:
        status["active_finetunes"] = None if active is None else [_active(cfg, client, r, now) for r in active]
        status["recent"] = None if ended is None else _recent(client, ended, days)
    except registry.RegistryUnavailableError as exc:  # the store went away after the models were read
        problems["registry"] = one_line(f"MLflow registry: unreachable: {exc}")
        status["active_finetunes"] = None if active is None else [_active(cfg, None, r, now) for r in active]
        status["recent"] = None if ended is None else _recent(None, ended, days)
    status["decisions"] = None if warehouse_error else _decisions(engine, decisions)
    status["problems"] = problems
    status["complete"] = not problems
    return dict(json_safe(status))


# -- sources ------------------------------------------------------------------------------------------------
def _hide(uri: str) -> str:
    import re

    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", uri)


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _check_warehouse(engine: sa.Engine) -> str | None:
    import sqlalchemy as sa

    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        cause = getattr(exc, "orig", None) or exc  # the driver's error, never the statement
        return one_line(f"warehouse at {where}: unreachable ({type(cause).__name__}: {cause})")
    return None


def _has_table(engine: sa.Engine, name: str) -> bool:
    import sqlalchemy as sa

    return bool(sa.inspect(engine).has_table(name))


def _live_reader(engine: sa.Engine, cfg: FtopsConfig) -> Callable[[str, str, datetime], dict[str, Any]] | None:
    """``(task_type, version, since) -> live metrics``, or None when no call was ever logged."""
    from ftops.warehouse.state import live_metrics

    if not _has_table(engine, cfg.interactions_table):
        return None

    def read(task_type: str, version: str, since: datetime) -> dict[str, Any]:
        m = live_metrics(engine, task_type, served_model_version(task_type, version), since, cfg.interactions_table,
                         success_min_rating=cfg.canary.success_min_rating)  # fmt: skip
        keep = ("requests", "error_rate", "latency_p95_ms", "rated", "mean_rating", "task_success_rate")
        return {"since": since.isoformat(), **{k: m[k] for k in keep}}

    return read


def _decisions(engine: sa.Engine, limit: int) -> list[dict[str, Any]]:
    from ftops.warehouse.state import read_decisions

    if not _has_table(engine, "ftops_decisions"):
        return []
    return list(redact(read_decisions(engine, limit=limit)))  # details may hold scrubbed examples: withheld


# -- fine-tunes ---------------------------------------------------------------------------------------------
def _active(cfg: FtopsConfig, client: MlflowClient | None, run: dict[str, Any], now: datetime) -> dict[str, Any]:
    """One active fine-tune: the DAG run's conf joined with its training run (MLflow errors: unavailable)."""
    with registry.store_errors(f"read the training run of {run['dag_run_id']}"):
        return _active_run(cfg, client, run, now)


def _active_run(cfg: FtopsConfig, client: MlflowClient | None, run: dict[str, Any], now: datetime) -> dict[str, Any]:
    conf = run.get("conf") or {}
    task_type = _task_type(conf)
    out: dict[str, Any] = {
        "dag_run_id": run["dag_run_id"], "state": run["state"], "task_type": task_type,
        "dataset_version": conf.get("dataset_version"), "reason": conf.get("reason"),
        "queued_at": run.get("queued_at"), "started_at": run.get("start_date"),
    }  # fmt: skip
    if client is None or task_type is None:
        return out
    run_key = f"{run['dag_run_id']}/{task_type}"
    run_id = registry.unfinished_run(task_type, run_key) or registry.find_run(task_type, run_key)
    if run_id is None:
        if run["state"] == "running":
            out["phase"] = "not training yet (checking the request, or waiting for the training slot)"
        out |= _dataset_size(cfg, task_type, conf.get("dataset_version"))
        return out
    mlflow_run = client.get_run(run_id)
    tags, params, status = mlflow_run.data.tags, mlflow_run.data.params, mlflow_run.info.status
    phase = {"RUNNING": "training", "FINISHED": "evaluating and registering"}.get(status, "retrying training")
    out |= {"phase": phase, "mlflow_run_id": run_id, "mlflow_status": status, "backend": tags.get("backend"),
            "base_model": tags.get("base_model"), "dataset_version": tags.get("dataset_version")}  # fmt: skip
    if "train_examples" in params:
        out["dataset_rows"] = {"train": int(params["train_examples"])}
    else:
        out |= _dataset_size(cfg, task_type, tags.get("dataset_version"))
    if tags.get("openai.status"):
        out["api_job_status"] = tags["openai.status"]
    out["progress"] = _progress(client, run_id, mlflow_run.data.metrics, params, now, finished=status == "FINISHED")
    return out


def _task_type(conf: dict[str, Any]) -> str | None:
    """The conf's task type when it is a valid name (a run triggered by hand may carry anything)."""
    value = conf.get("task_type")
    return value if isinstance(value, str) and is_task_type(value) else None


def _dataset_size(cfg: FtopsConfig, task_type: str, version: str | None) -> dict[str, Any]:
    try:
        datasets = dataset_registry(cfg)
        found = datasets.get(task_type, version)
        meta = datasets.read_metadata(found)
    except Exception as exc:  # noqa: BLE001 - shown in place of the size (a missing version, DVC unreachable)
        return {"dataset_rows": None, "dataset_error": one_line(f"{type(exc).__name__}: {exc}", 200)}
    return {"dataset_version": found.tag, "dataset_rows": {"train": meta["train_rows"], "test": meta["test_rows"]}}


def _progress(
    client: MlflowClient, run_id: str, metrics: dict[str, float], params: dict[str, str], now: datetime,
    *, finished: bool,
) -> dict[str, Any]:
    """Step, fraction done and ETA from the run's progress metrics (logged every few steps while training)."""
    history = client.get_metric_history(run_id, "eta_s")
    if finished:
        return {"fraction": 1.0, "step": int(metrics.get("train_steps", 0)) or None, "eta_s": 0.0}
    if not history:
        return {"fraction": 0.0, "step": 0, "eta_s": None, "note": "no progress logged yet"}
    last = max(history, key=lambda m: (m.step, m.timestamp))
    logged_at = datetime.fromtimestamp(last.timestamp / 1000, UTC)
    total = metrics.get("max_steps")
    epochs = params.get("epochs") or params.get("n_epochs")
    if total:
        fraction = last.step / total
    elif epochs and "epoch" in metrics:
        fraction = metrics["epoch"] / float(epochs)
    else:
        fraction = None
    return {
        "step": last.step, "max_steps": int(total) if total else None,
        "fraction": None if fraction is None else round(min(max(fraction, 0.0), 1.0), 4),
        "eta_s": round(max(last.value - (now - logged_at).total_seconds(), 0.0), 1),
        "train_loss": metrics.get("train_loss"), "tokens_per_s": metrics.get("tokens_per_s"),
        "logged_at": logged_at.isoformat(),
    }  # fmt: skip


def _recent(client: MlflowClient | None, runs: list[dict[str, Any]], days: int) -> dict[str, Any]:
    succeeded = [r for r in runs if r["state"] == "success"]
    durations = [float(r["duration"]) for r in succeeded if r.get("duration") is not None]
    shown = []
    versions: dict[str, dict[str, ModelVersion]] = {}
    for r in runs[:10]:
        task_type = _task_type(r.get("conf") or {})
        entry = {"dag_run_id": r["dag_run_id"], "state": r["state"], "task_type": task_type,
                 "ended_at": r.get("end_date"), "duration_s": r.get("duration")}  # fmt: skip
        if client is not None and task_type is not None:
            if task_type not in versions:
                versions[task_type] = {str(mv.run_id): mv for mv in registry.versions(task_type)}
            with registry.store_errors(f"find the training run of {r['dag_run_id']}"):
                run_id = registry.find_run(task_type, f"{r['dag_run_id']}/{task_type}")
            mv = versions[task_type].get(str(run_id)) if run_id else None
            if mv is not None:
                entry |= {"version": str(mv.version), "decision": mv.tags.get("decision"),
                          "deployment": mv.tags.get("deployment")}  # fmt: skip
        shown.append(entry)
    return {
        "days": days, "runs": shown, "succeeded": len(succeeded), "failed": len(runs) - len(succeeded),
        "success_rate": len(succeeded) / len(runs) if runs else None,
        "avg_duration_s": sum(durations) / len(durations) if durations else None,
    }  # fmt: skip


# -- models in service --------------------------------------------------------------------------------------
def _models(
    cfg: FtopsConfig, task_type: str, live: Callable[[str, str, datetime], dict[str, Any]] | None, now: datetime,
    cost: Callable[[str, str], float | None] | None = None,
) -> dict[str, Any]:
    champion = registry.alias_version(task_type, registry.CHAMPION)
    canary = registry.alias_version(task_type, registry.CANARY)
    out: dict[str, Any] = {"task_type": task_type, "model": registry.model_name(task_type),
                           "champion": version_summary(champion, cfg.gate.confidence),
                           "canary": version_summary(canary, cfg.gate.confidence)}  # fmt: skip
    window_start = now - LIVE_WINDOW
    if canary is not None:
        out["canary"] |= canary_schedule(cfg, canary.tags or {}, now)
        window_start = parse_time(canary.tags.get("deployed_at")) or window_start
        if live is not None:
            out["canary"]["live"] = live(task_type, str(canary.version), window_start)
    if champion is not None and live is not None:
        out["champion"]["live"] = live(task_type, str(champion.version), window_start)
    out["accuracy_by_version"] = compare_versions(task_type, confidence=cfg.gate.confidence)
    if cost is not None:
        out["cost"] = cost_summary(task_type, {"champion": str(champion.version) if champion else None,
                                               "canary": str(canary.version) if canary else None}, cost)  # fmt: skip
    return out


def version_summary(mv: ModelVersion | None, confidence: float | None = None) -> dict[str, Any] | None:
    """A version's lineage, gate metrics against the baseline, the yardstick of each figure
    (:func:`ftops.registry.yardstick.yardstick`) and deployment tags (never a prompt)."""
    if mv is None:
        return None
    t = dict(mv.tags or {})
    metrics = {k.removeprefix("metric."): {"value": _float(v), "baseline": _float(t.get(f"baseline.{k[7:]}"))}
               for k, v in sorted(t.items()) if k.startswith("metric.")}  # fmt: skip
    keep = ("dataset_version", "backend", "base_model", "decision", "baseline", "deployment", "traffic_percent",
            "promoted_at", "deployed_at")  # fmt: skip
    return {"version": str(mv.version), **{k: t.get(k) for k in keep}, "metrics": metrics,
            "yardstick": yardstick(t, confidence=confidence)}  # fmt: skip


def canary_schedule(cfg: FtopsConfig, tags: dict[str, str], now: datetime) -> dict[str, Any]:
    """Where a canary is on its ramp and the earliest time it can be promoted.

    Each step of ``canary.ramp_percent`` lasts ``duration_hours / len(ramp_percent)`` and needs
    ``min_requests`` calls of its own (:mod:`ftops.deployment.canary`), so the earliest promotion is the current
    step's start plus the remaining steps' time; fewer calls, or a review that finds harm, delay or stop it.
    """
    steps = cfg.canary.ramp_percent
    step_hours = cfg.canary.duration_hours / len(steps)
    try:
        step = min(max(int(tags.get("ramp_step") or 0), 0), len(steps) - 1)
    except ValueError:
        step = 0
    deployed = parse_time(tags.get("deployed_at"))
    started = (parse_time(tags.get("ramp_started_at")) if step > 0 else None) or deployed
    out: dict[str, Any] = {"ramp_step": step + 1, "ramp_steps": len(steps), "ramp_percent": list(steps),
                           "step_hours": step_hours, "min_requests_per_step": cfg.canary.min_requests,
                           "ramp_reason": tags.get("ramp_reason")}  # fmt: skip
    if started is not None:
        earliest = started + timedelta(hours=step_hours * (len(steps) - step))
        out |= {"earliest_promotion_at": earliest.isoformat(),
                "hours_to_promotion": round(max((earliest - now).total_seconds() / 3600, 0.0), 2)}  # fmt: skip
    return out


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None

