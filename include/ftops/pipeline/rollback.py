"""The ``ftops_rollback`` step: put an earlier version back as champion.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ftops.deployment import rollout
from ftops.registry import models as registry

if TYPE_CHECKING:


    pass


log = logging.getLogger(__name__)


def rollback(task_type: str, to_version: str | None) -> dict[str, Any]:
    """Put ``to_version`` (default: the ``previous`` alias) back as champion; also retires any canary."""
    rollout.retire_canary(task_type, "manual rollback")
    old, new = rollout.restore_champion(task_type, to_version)
    log.info("%s champion: v%s -> v%s", registry.model_name(task_type), old or "none", new)
    return {"task_type": task_type, "from_version": old, "to_version": new}
