"""The ``ftops_canary`` step: judge a task type's canary on what its users saw next to the champion's, then
hold it, ramp its traffic share, promote it or roll it back (rules: :mod:`ftops.deployment.canary`).

The canary's state lives in its version tags, so any worker can pick it up: ``deployed_at`` (the window
start), ``ramp_step`` (index into ``canary.ramp_percent``), ``ramp_started_at`` (the current step's window
start) and ``traffic_percent`` (the share the router serves).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.deployment import rollout
from ftops.pipeline.common import json_safe, parse_time, served_model_version
from ftops.registry import models as registry

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ftops.deployment.canary import CanaryVerdict


log = logging.getLogger(__name__)


def review_canary(engine: sa.Engine, cfg: FtopsConfig, task_type: str, now: datetime | None = None) -> dict[str, Any]:
    """Judge a task type's canary from live logs and hold, ramp, promote or roll it back.

    Safe to repeat and to overlap: every move names the version judged and is skipped when the ``canary``
    alias has moved on (see :mod:`ftops.deployment.rollout`); a second review at the same ``now`` finds the
    move done (a ramp's new step has just begun, a promoted or retired canary is gone) and changes nothing.

    Args:
        engine: The warehouse holding the interaction log.
        cfg: The config (``canary`` section, ``interactions_table``).
        task_type: The task type.
        now: The review time (default: now); the windows end here.

    Returns:
        The verdict as strict JSON: ``action`` (``none``, ``hold``, ``ramp``, ``promote``, ``rollback``),
        ``reason``, ``applied`` (False when the canary alias moved to another version before the move, so
        nothing was changed), ``version``, ``champion_version``, ``step``, ``traffic_percent`` (the share after
        the action), ``comparisons``, the window starts and the metric sets (canary and champion since
        deployment, canary in the current step) and the champion's in the current step.
    """
    from ftops.deployment.canary import RampPosition, judge, min_judge_requests
    from ftops.warehouse.state import live_metrics

    canary = registry.alias_version(task_type, registry.CANARY)
    if canary is None:
        return {"task_type": task_type, "action": "none", "reason": "no canary"}
    now = now or datetime.now(UTC)
    version = str(canary.version)
    champion = registry.alias_version(task_type, registry.CHAMPION)
    if champion is not None and str(champion.version) == version:
        applied = rollout.promote_canary(task_type, version) == version
        reason = "finished a promotion interrupted after the champion alias moved"
        return {"task_type": task_type, "version": version, "champion_version": version, "action": "promote",
                "reason": reason, "applied": applied}  # fmt: skip
    tags = dict(canary.tags or {})
    deployed = parse_time(tags.get("deployed_at"))
    if deployed is None:
        log.warning("%s v%s has no valid deployed_at tag: its window starts now", task_type, version)
        registry.set_tags(task_type, version, {"deployed_at": now.isoformat()})
        deployed = now
    steps = cfg.canary.ramp_percent
    step = min(max(_parse_int(tags.get("ramp_step")), 0), len(steps) - 1)
    step_started = max((parse_time(tags.get("ramp_started_at")) if step > 0 else None) or deployed, deployed)

    def metrics(v: str, since: datetime) -> dict[str, Any]:
        return live_metrics(engine, task_type, served_model_version(task_type, v), since, cfg.interactions_table,
                            until=now, success_min_rating=cfg.canary.success_min_rating)  # fmt: skip

    canary_m = metrics(version, deployed)
    champion_m = metrics(str(champion.version), deployed) if champion is not None else {}
    step_m = canary_m if step_started == deployed else metrics(version, step_started)
    # the champion over the same step: the canary's latency in the step is judged against it
    champion_step = champion_m if step_started == deployed or champion is None else metrics(str(champion.version),
                                                                                            step_started)  # fmt: skip
    before = None  # the canary's calls the champion served beside: when it serves too few in this step (100 %)
    if step_started > deployed and champion_step and int(champion_step["requests"]) < min_judge_requests(cfg.canary):
        before = live_metrics(engine, task_type, served_model_version(task_type, version), deployed,
                              cfg.interactions_table, until=step_started,
                              success_min_rating=cfg.canary.success_min_rating)  # fmt: skip
    verdict = judge(canary_m, champion_m, _hours(now - deployed), cfg.canary,
                    RampPosition(step, _hours(now - step_started), step_m, champion_step or None, before))  # fmt: skip
    applied = _apply(task_type, version, verdict, now)
    log.info("%s canary v%s: %s%s (%s)", task_type, version, verdict.action, "" if applied else " NOT APPLIED",
             verdict.reason)  # fmt: skip
    return json_safe({
        "task_type": task_type, "version": version,
        "champion_version": str(champion.version) if champion is not None else None,
        **verdict.as_dict(), "applied": applied, "ramp_percent": list(steps),
        "window_start": deployed.isoformat(), "step_started_at": step_started.isoformat(),
        "reviewed_at": now.isoformat(),
        "canary_metrics": canary_m, "champion_metrics": champion_m, "step_metrics": step_m,
        "champion_step_metrics": champion_step,
    })  # fmt: skip


def _apply(task_type: str, version: str, verdict: CanaryVerdict, now: datetime) -> bool:
    """Carry out a verdict on the judged version; False when the canary alias has moved on (nothing done)."""
    if verdict.action == "ramp":
        assert verdict.traffic_percent is not None
        return rollout.ramp_canary(task_type, version, step=verdict.step + 1, traffic_percent=verdict.traffic_percent,
                                   started_at=now.isoformat(), reason=verdict.reason)  # fmt: skip
    if verdict.action == "promote":
        return rollout.promote_canary(task_type, version, reason=verdict.reason) == version
    if verdict.action == "rollback":
        return rollout.retire_canary(task_type, verdict.reason, version=version) == version
    return True  # hold: nothing to move


def _hours(delta: Any) -> float:
    return float(delta.total_seconds()) / 3600




def _parse_int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
