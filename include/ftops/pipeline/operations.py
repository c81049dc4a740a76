"""What a person (or an assistant through ``ftops mcp``) may ask of FT-Ops outside the schedules: explain a model
version, read decisions, ask for a fine-tune or a rollback.

Requests go through guards before anything starts, and every request is recorded in ``ftops_decisions``,
refused or not (kind ``training_request`` or ``rollback_request``, with the guard's reason). A request to
train passes the governor's own guards (:func:`ftops.pipeline.governor.training_guards`) and then triggers
``ftops_governor`` with ``force``, which applies them again when it runs and records its own decision; a
request to roll back is checked against the registry here and triggers ``ftops_rollback`` with the version it
checked. Nothing here returns a prompt, a response or a user id: decision details are redacted of examples.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ftops.core.airflow_api import AirflowAPI, AirflowAPIError, AirflowUnavailableError
from ftops.core.config import FtopsConfig
from ftops.core.names import check_task_type
from ftops.deployment.guards import RollbackCheck, rollback_guard
from ftops.pipeline.common import dataset_registry, json_safe, served_model_version
from ftops.pipeline.comparison import compare_versions
from ftops.registry import models as registry
from ftops.registry.yardstick import yardstick

if TYPE_CHECKING:
    from collections.abc import Callable

    import sqlalchemy as sa

    from ftops.pipeline.governor import Verdict

log = logging.getLogger(__name__)
GOVERNOR_DAG, ROLLBACK_DAG = "ftops_governor", "ftops_rollback"
MAX_REASON = 500
MAX_DECISIONS = 100
WITHHELD = frozenset({"examples", "prompt", "prompts", "response", "responses", "user_id", "user_ids"})
"""Keys whose values never leave through these functions (decision details may carry scrubbed examples)."""


def redact(value: Any) -> Any:
    """``value`` as strict JSON, with the values of :data:`WITHHELD` keys replaced by what was withheld."""
    if isinstance(value, dict):
        return {k: (f"[{_count(v)} withheld]" if k in WITHHELD else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return json_safe(value)
    return str(value)


def _count(value: Any) -> str:
    return f"{len(value)} item(s)" if isinstance(value, list | tuple | dict) else "1 item"


def check_reason(reason: str) -> str:
    """A request's reason, stripped: required, at most :data:`MAX_REASON` characters.

    Raises:
        ValueError: Empty or too long.
    """
    text = (reason or "").strip()
    if not text:
        raise ValueError("a reason is required: say why (it is recorded with the decision and the model)")
    if len(text) > MAX_REASON:
        raise ValueError(f"the reason has {len(text)} characters; at most {MAX_REASON}")
    return text


# -- reading ------------------------------------------------------------------------------------------------
def list_decisions(
    engine: sa.Engine, task_type: str | None = None, *, kind: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The latest decisions, newest first (details redacted).

    Raises:
        ValueError: ``limit`` outside 1..100, or an invalid task type.
    """
    import sqlalchemy as sa

    from ftops.warehouse.state import read_decisions

    if not 1 <= limit <= MAX_DECISIONS:
        raise ValueError(f"limit must be between 1 and {MAX_DECISIONS}, not {limit}")
    if task_type is not None:
        check_task_type(task_type)
    if not sa.inspect(engine).has_table("ftops_decisions"):
        return []
    return list(redact(read_decisions(engine, task_type, kind=kind, limit=limit)))


def read_decision(engine: sa.Engine, decision_key: str) -> dict[str, Any] | None:
    """One decision by its key (details redacted), or None."""
    import sqlalchemy as sa

    from ftops.warehouse.schema import as_utc, log_tables

    _, _, _, d = log_tables("interactions")
    if not sa.inspect(engine).has_table(d.name):
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.select(d).where(d.c.decision_key == decision_key)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["details"] = json.loads(out["details"]) if out["details"] else {}
    out["decided_at"] = as_utc(out["decided_at"])
    return dict(redact(out))


def explain_model(cfg: FtopsConfig, engine: sa.Engine, task_type: str, version: int) -> dict[str, Any]:
    """Why a registered version exists and where it stands: its dataset, the request or policy that trained it,
    its gate metrics and decision, its aliases and deployment tags. Never its test answers or prompts.

    ``yardstick`` holds its figures, each with the set it was measured on (:func:`ftops.registry.yardstick.
    yardstick`: the gate's eval set, accuracy against the champion and the gain's CI, the split without
    incumbent rows, the failure slice, the judge); ``on_latest_evalset`` its accuracy on the latest eval-set
    version any version of the task type was evaluated on, the one every version is compared on.

    Raises:
        InvalidNameError: The task type is not a valid name.
        ValueError: ``version`` is not a positive integer.
        LookupError: No such version.
        RegistryUnavailableError: The registry does not answer.
    """
    from ftops.datasets.versions import DatasetNotFoundError

    name = registry.model_name(task_type)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, not {version!r}")
    c = registry.client()
    mv = None
    with registry.store_errors(f"read {name} version {version}", missing_ok=True):
        mv = c.get_model_version(name, str(version))
    if mv is None:
        raise LookupError(f"{name} has no version {version}")
    t = dict(mv.tags or {})
    dataset: dict[str, Any] = {"version": t.get("dataset_version"), "content_hash": t.get("content_hash")}
    if t.get("dataset_version"):
        try:
            datasets = dataset_registry(cfg)
            meta = datasets.read_metadata(datasets.get(task_type, t["dataset_version"]))
            dataset |= {"train_rows": meta["train_rows"], "test_rows": meta["test_rows"],
                        "logs_until": (meta.get("window") or {}).get("until")}  # fmt: skip
        except DatasetNotFoundError as exc:
            dataset["error"] = str(exc)
    run_metrics: dict[str, float] = {}
    if mv.run_id:
        with registry.store_errors(f"read run {mv.run_id}", missing_ok=True):
            run_metrics = dict(c.get_run(mv.run_id).data.metrics)
    decision_key = t.get("ftops.decision_key")
    stick = yardstick(t, run_metrics=run_metrics, confidence=cfg.gate.confidence)
    comparison = compare_versions(task_type, aliases={})  # roles are not needed: no read of the aliases
    point = next((p for p in comparison["points"] if p["version"] == str(mv.version)), {"accuracy": None,
                 "note": "not among the versions the registry listed"})  # fmt: skip
    metrics = {k.removeprefix("metric."): {"value": _num(v), "baseline": _num(t.get("baseline." + k[7:]))}
               for k, v in sorted(t.items()) if k.startswith("metric.")}  # fmt: skip
    deployment = ("deployment", "traffic_percent", "deployed_at", "ramp_step", "promoted_at", "promote_reason",
                  "rollback_reason", "rolled_back_at", "archive_reason", "ftops.erasure_pending")  # fmt: skip
    return dict(redact({
        "task_type": task_type, "model": name, "version": str(mv.version), "aliases": sorted(mv.aliases or []),
        "registered_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None,
        "mlflow_run_id": mv.run_id,
        "dataset": dataset,
        "training": {"backend": t.get("backend"), "base_model": t.get("base_model"), "reason": t.get("trigger_reason"),
                     "policy": t.get("ftops.policy"), "decision_key": decision_key,
                     "train_seconds": run_metrics.get("train_seconds"),
                     "final_loss": run_metrics.get("train_final_loss")},
        "trigger_decision": read_decision(engine, decision_key) if decision_key else None,
        "gate": {"decision": t.get("decision"), "reasons": [r for r in t.get("reason", "").split("; ") if r],
                 "baseline": t.get("baseline"), "metrics": metrics,
                 "trivial_accuracy": _num(t.get("trivial.accuracy"))},
        "deployment": {k: t.get(k) for k in deployment if t.get(k) is not None},
        "yardstick": stick,
        "on_latest_evalset": {"yardstick": comparison["yardstick"], "comparable": comparison["comparable"],
                              "accuracy": point["accuracy"], "note": point["note"]},
        "cost": _cost(cfg, engine, task_type, str(mv.version)),
    }))  # fmt: skip


def _cost(cfg: FtopsConfig, engine: sa.Engine, task_type: str, version: str) -> dict[str, Any]:
    """The version's cost per 1 000 calls from its logged calls, and its saving against the task type's first
    upstream version, if it ever had one (:func:`cost_summary`)."""
    summary = cost_summary(task_type, {"version": version}, cost_reader(engine, cfg))
    return {"per_1k_calls": summary["version_per_1k_calls"], "saving": summary.get("version_saving"),
            "first_upstream": summary.get("first_upstream")}


def cost_reader(engine: sa.Engine, cfg: FtopsConfig) -> Callable[[str, str], float | None]:
    """``(task_type, version) -> cost per 1 000 calls`` from the version's latest answered calls (None: unpriced)."""
    from ftops.warehouse.costs import cost_per_1k_calls

    def read(task_type: str, version: str) -> float | None:
        found = cost_per_1k_calls(engine, task_type, served_model_version(task_type, version), cfg.interactions_table,
                                  cost_per_hour=cfg.gate.compute_cost_per_hour)  # fmt: skip
        return found["per_1k_calls"]

    return read


def cost_summary(task_type: str, served: dict[str, Any], cost: Callable[[str, str], float | None]) -> dict[str, Any]:
    """Cost per 1 000 calls of the served versions (``served``: role -> version or None) and, when the task type
    ever had an upstream version, the saving of each against the first one (1 - cost / its cost)."""
    from ftops.registry.upstream import MODEL_TAG, UPSTREAM

    out: dict[str, Any] = {f"{role}_per_1k_calls": cost(task_type, v) if v else None for role, v in served.items()}
    upstream = sorted((v for v in registry.versions(task_type) if (v.tags or {}).get("backend") == UPSTREAM),
                      key=lambda v: int(v.version))  # fmt: skip
    if upstream:
        first = upstream[0]
        theirs = cost(task_type, str(first.version))
        out["first_upstream"] = {"version": str(first.version), "model": (first.tags or {}).get(MODEL_TAG),
                                 "per_1k_calls": theirs}  # fmt: skip
        for role in served:
            mine = out[f"{role}_per_1k_calls"]
            ok = mine is not None and theirs
            out[f"{role}_saving"] = 1 - mine / theirs if ok else None
    return out


def _num(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


# -- requests -----------------------------------------------------------------------------------------------
def _request_ids(kind: str, task_type: str, now: datetime) -> tuple[str, str]:
    """(decision key, DAG run id) of one request: each request is its own event, so a fresh id each time."""
    rid = uuid.uuid4().hex[:12]
    return f"mcp/{kind}/{task_type}/{rid}", f"mcp__{task_type}__{now:%Y%m%dT%H%M%S}__{rid}"


def _record(engine: sa.Engine, key: str, now: datetime, task_type: str, kind: str, **fields: Any) -> None:
    from ftops.warehouse.state import record_decision

    record_decision(engine, {"decision_key": key, "decided_at": now, "task_type": task_type, "kind": kind, **fields})


def request_training(
    engine: sa.Engine, cfg: FtopsConfig, airflow: AirflowAPI, task_type: str, reason: str, *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Ask for a fine-tune of ``task_type`` now: refused when a governor guard says no, else ``ftops_governor``
    is triggered with ``force`` and the reason. Either way the request is recorded (kind ``training_request``).

    Returns:
        ``accepted``; ``reason`` (the guard's when refused); ``decision_key``; when accepted ``dag_id``,
        ``dag_run_id``, ``state`` and ``dag_paused`` (a paused DAG's run waits until it is unpaused).

    Raises:
        InvalidNameError: The task type is not a valid name.
        ValueError: No reason, or one over 500 characters.
        LookupError: The task type is unknown.
        AirflowUnavailableError: Airflow did not answer (the refusal to start is recorded).
    """
    from ftops.pipeline.governor import training_guards
    from ftops.warehouse.schema import ensure_schema

    check_task_type(task_type)
    why = check_reason(reason)
    now = now or datetime.now(UTC)
    ensure_schema(engine, cfg.interactions_table)
    verdict = training_guards(engine, cfg, task_type, now=now)
    key, run_id = _request_ids("training_request", task_type, now)
    details = {"requested_reason": why, "requested_through": "mcp", "guards": verdict.details}
    record = {"details": details, "policy": "force"}
    if not verdict.allowed:
        _record(engine, key, now, task_type, "training_request", train=False, reason=verdict.reason, **record)
        log.info("Training request for %s refused: %s", task_type, verdict.reason)
        return {"accepted": False, "task_type": task_type, "reason": verdict.reason, "decision_key": key}
    conf = {"task_type": task_type, "force": True, "reason": why}
    return _trigger(engine, airflow, GOVERNOR_DAG, conf, run_id, key, now, task_type, "training_request", verdict,
                    record, accepted_reason=f"requested: {why}")  # fmt: skip


def request_rollback(
    engine: sa.Engine, cfg: FtopsConfig, airflow: AirflowAPI, task_type: str, reason: str,
    to_version: int | None = None, *, now: datetime | None = None,
) -> dict[str, Any]:
    """Ask for ``task_type``'s champion to go back to ``to_version`` (default ``previous``): refused when
    :func:`ftops.deployment.guards.rollback_guard` says no (``ftops_rollback``'s task asks it again), else
    ``ftops_rollback`` is triggered with the version it checked. Either
    way the request is recorded (kind ``rollback_request``).

    Raises:
        InvalidNameError: The task type is not a valid name.
        ValueError: No reason (or too long), or ``to_version`` not a positive integer.
        AirflowUnavailableError: Airflow did not answer (recorded).
    """
    from ftops.warehouse.schema import ensure_schema

    check_task_type(task_type)
    why = check_reason(reason)
    if to_version is not None and (isinstance(to_version, bool) or not isinstance(to_version, int) or to_version < 1):
        raise ValueError(f"to_version must be a positive integer, not {to_version!r}")
    now = now or datetime.now(UTC)
    ensure_schema(engine, cfg.interactions_table)
    verdict = rollback_guard(task_type, to_version)
    target = verdict.target
    key, run_id = _request_ids("rollback_request", task_type, now)
    record = {"details": {"requested_reason": why, "requested_through": "mcp", "to_version": to_version,
                          "guards": verdict.details}}  # fmt: skip
    if not verdict.allowed:
        _record(engine, key, now, task_type, "rollback_request", train=False, reason=verdict.reason, **record)
        log.info("Rollback request for %s refused: %s", task_type, verdict.reason)
        return {"accepted": False, "task_type": task_type, "reason": verdict.reason, "decision_key": key}
    conf = {"task_type": task_type, "to_version": target}
    return _trigger(engine, airflow, ROLLBACK_DAG, conf, run_id, key, now, task_type, "rollback_request", verdict,
                    record, accepted_reason=f"rollback to v{target} requested: {why}")  # fmt: skip


def _trigger(
    engine: sa.Engine, airflow: AirflowAPI, dag_id: str, conf: dict[str, Any], run_id: str, key: str, now: datetime,
    task_type: str, kind: str, verdict: Verdict | RollbackCheck, record: dict[str, Any], *, accepted_reason: str,
) -> dict[str, Any]:
    """Trigger an allowed request's DAG run and record the request with the run id (or why it did not start)."""
    try:
        run = airflow.trigger(dag_id, conf, run_id=run_id)
    except (AirflowUnavailableError, AirflowAPIError) as exc:
        _record(engine, key, now, task_type, kind, train=False, **record,
                reason=f"the guards allowed it, but {dag_id} could not be triggered: {exc}")  # fmt: skip
        raise
    _record(engine, key, now, task_type, kind, train=True, reason=accepted_reason, run_id=run["dag_run_id"], **record)
    try:
        paused: bool | None = bool(airflow.dag(dag_id).get("is_paused"))
    except (AirflowUnavailableError, AirflowAPIError):
        paused = None
    log.info("%s for %s: triggered %s run %s", kind, task_type, dag_id, run["dag_run_id"])
    return {"accepted": True, "task_type": task_type, "reason": verdict.reason, "decision_key": key,
            "dag_id": dag_id, "dag_run_id": run["dag_run_id"], "state": run.get("state"), "conf": conf,
            "dag_paused": paused}  # fmt: skip
