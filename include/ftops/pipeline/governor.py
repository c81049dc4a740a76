"""The ``ftops_governor`` step: decide per task type whether to train, and record every decision.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.pipeline.common import dataset_registry
from ftops.registry import models as registry

if TYPE_CHECKING:

    import sqlalchemy as sa



log = logging.getLogger(__name__)


# -- governance -----------------------------------------------------------------------------------------
def govern(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_types: list[str],
    *,
    run_key: str,
    force: bool = False,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """Decide for each task type whether to train; record every decision in the warehouse.

    Retry-safe: decisions are keyed by run key and task type.
    """
    from ftops.governance.policy import decide
    from ftops.warehouse.schema import ensure_schema
    from ftops.warehouse.state import read_decisions, record_decision

    ensure_schema(engine, cfg.interactions_table)
    datasets = dataset_registry(cfg)
    decisions = []
    for task_type in task_types or datasets.task_types():
        # A dataset already sent to training by an earlier run counts as trained: several curate events in
        # a row must not start several fine-tunes of the same data.
        sent = {d["dataset_version"] for d in read_decisions(engine, task_type) if d["train"] and d["dataset_version"]}
        latest = datasets.latest(task_type)
        rows = 0
        if latest is not None:
            meta = datasets.read_metadata(latest)
            rows = int(meta["train_rows"]) + int(meta["test_rows"])
        decision = decide(
            task_type,
            latest_dataset=latest.tag if latest else None,
            dataset_rows=rows,
            trained_datasets=registry.trained_dataset_versions(task_type) | sent,
            cfg=cfg.governor,
            force=force,
            requested_reason=reason,
        )
        log.info("%s: %s (%s)", task_type, "TRAIN" if decision.train else "wait", decision.reason)
        record_decision(engine, {**decision.as_dict(), "decision_key": f"{run_key}/{task_type}",
                                 "decided_at": datetime.now(UTC)})  # fmt: skip
        decisions.append(decision.as_dict())
    return decisions
