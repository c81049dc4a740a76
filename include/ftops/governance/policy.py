"""The governor's policy: whether to train a task type now, and why.

Reasons, in order: a person asked (``force``); the newest dataset version has not been trained on and holds
at least ``min_new_examples`` examples. Every decision, train or not, carries its reason and is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ftops.core.config import GovernorConfig


@dataclass(frozen=True)
class Decision:
    task_type: str
    train: bool
    reason: str
    dataset_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    task_type: str,
    *,
    latest_dataset: str | None,
    dataset_rows: int,
    trained_datasets: set[str],
    cfg: GovernorConfig,
    force: bool = False,
    requested_reason: str | None = None,
) -> Decision:
    """Decide whether to train ``task_type``.

    Args:
        task_type: The task type.
        latest_dataset: Tag of the newest dataset version, or None when there is none.
        dataset_rows: Examples (train + test) in that version.
        trained_datasets: Dataset tags some registered model version was already trained on.
        cfg: Governor thresholds.
        force: A person asked for training.
        requested_reason: Their reason, recorded with the decision.

    Returns:
        The decision with its reason.
    """
    details = {"dataset_rows": dataset_rows, "min_new_examples": cfg.min_new_examples}
    if latest_dataset is None:
        return Decision(task_type, False, "no dataset version yet: run ftops_curate first", None, details)
    if force:
        why = requested_reason or "no reason given"
        return Decision(task_type, True, f"manual request: {why}", latest_dataset, details)
    if latest_dataset in trained_datasets:
        reason = f"{latest_dataset} was already trained on (or sent to training)"
        return Decision(task_type, False, reason, latest_dataset, details)
    if dataset_rows < cfg.min_new_examples:
        reason = f"{latest_dataset} has {dataset_rows} examples, fewer than {cfg.min_new_examples}"
        return Decision(task_type, False, reason, latest_dataset, details)
    reason = f"{latest_dataset} brings {dataset_rows} new high-quality examples (≥ {cfg.min_new_examples})"
    return Decision(task_type, True, reason, latest_dataset, details)
