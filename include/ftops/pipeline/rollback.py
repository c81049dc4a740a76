"""The ``ftops_rollback`` step: put an earlier version back as champion, guarded and safe to retry."""

from __future__ import annotations

import logging
from typing import Any

from ftops.deployment import guards, rollout
from ftops.registry import models as registry

log = logging.getLogger(__name__)


def rollback(task_type: str, to_version: str | None, *, key: str | None = None) -> dict[str, Any]:
    """Put ``to_version`` (default: the ``previous`` alias) back as champion; also retires any canary.

    The target is resolved once (:func:`ftops.deployment.rollout.plan_restore`: a retry finds the move an
    earlier attempt recorded), checked by :func:`ftops.deployment.guards.check_rollback` (unless the champion
    already moved to it), and the champion is moved only from the champion the rollback started from.

    Args:
        task_type: The task type.
        to_version: The version to restore; None: ``previous``.
        key: Names the request (the DAG run id), so a retry of it finishes its own move.

    Raises:
        RollbackRefused: The guard refuses the target (archived, gate-failed, erasure-pending, never served...).
        ChampionMovedError: Another writer moved the champion meanwhile; nothing was changed.
        LookupError: No ``previous`` and no version named, or an unknown version.
    """
    plan = rollout.plan_restore(task_type, to_version, key=key)
    if plan.stage != "finish":
        guards.check_rollback(task_type, plan.new)
    rollout.retire_canary(task_type, "manual rollback")
    old, new = rollout.restore_champion(task_type, key=key, plan=plan)
    log.info("%s champion: v%s -> v%s", registry.model_name(task_type), old or "none", new)
    return {"task_type": task_type, "from_version": old, "to_version": new}
