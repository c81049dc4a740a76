"""The ``ftops_canary`` step: judge a task type's canary from live logs, then hold, promote or roll it back.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.deployment import rollout
from ftops.pipeline.common import served_model_version
from ftops.registry import models as registry

if TYPE_CHECKING:

    import sqlalchemy as sa



log = logging.getLogger(__name__)


# -- canary and rollback --------------------------------------------------------------------------------
def review_canary(engine: sa.Engine, cfg: FtopsConfig, task_type: str, now: datetime | None = None) -> dict[str, Any]:
    """Judge a task type's canary from live logs and hold, promote or roll it back."""
    from ftops.deployment.canary import judge
    from ftops.warehouse.state import live_metrics

    canary = registry.alias_version(task_type, registry.CANARY)
    if canary is None:
        return {"task_type": task_type, "action": "none", "reason": "no canary"}
    now = now or datetime.now(UTC)
    started = datetime.fromisoformat(canary.tags.get("deployed_at") or now.isoformat())
    window = max(started, now - timedelta(hours=cfg.canary.duration_hours * 2))
    table = cfg.interactions_table
    canary_metrics = live_metrics(engine, task_type, served_model_version(task_type, canary.version), window, table)
    champion = registry.alias_version(task_type, registry.CHAMPION)
    champion_metrics = (
        live_metrics(engine, task_type, served_model_version(task_type, champion.version), window, table)
        if champion else {}
    )  # fmt: skip
    verdict = judge(canary_metrics, champion_metrics, (now - started).total_seconds() / 3600, cfg.canary)
    if verdict.action == "promote":
        rollout.promote_canary(task_type)
    elif verdict.action == "rollback":
        rollout.retire_canary(task_type, verdict.reason)
    log.info("%s canary v%s: %s (%s)", task_type, canary.version, verdict.action, verdict.reason)
    return {"task_type": task_type, "version": str(canary.version), **verdict.as_dict(),
            "canary_metrics": canary_metrics, "champion_metrics": champion_metrics}  # fmt: skip
