"""The ``ftops_governor`` step: decide per task type whether to train, and record every decision.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.core.names import key_digest
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
        out = decision.as_dict()
        if decision.train:
            out["finetune_run_id"] = finetune_run_id(task_type, decision.dataset_version, force=force, run_key=run_key)
        decisions.append(out)
    return decisions


def finetune_run_id(task_type: str, dataset_version: str | None, *, force: bool, run_key: str) -> str:
    """The ``ftops_finetune`` run id a decision triggers: task type + dataset version + policy.

    Deterministic, so a retried governor task (or a second governor run deciding the same) finds the run it
    started instead of starting a second fine-tune of the same data. A forced decision is keyed by the
    governor run as well: a person asking again later is a new request. Only characters Airflow allows in
    run ids (``[A-Za-z0-9_.~:+-]``).
    """
    version = (dataset_version or "latest").rsplit("/", 1)[-1]
    policy = f"force-{key_digest(run_key)[:12]}" if force else "new_data"
    return f"governor__{task_type}__{version}__{policy}"
