"""Moving registry aliases to put versions in and out of service: deploy (champion or canary), ramp a canary's
share, promote a canary, retire a canary, restore a champion. Each move also tags the versions it touches.

Canary moves name the version they judged and act only while the ``canary`` alias still points at it, so two
overlapping reviews (or a retry after a crash) cannot promote, ramp or retire a version they did not judge,
and repeating a finished move is a no-op. MLflow has no transactions: each move re-reads the alias right
before it writes, but another writer can still move the alias between that read and the write (milliseconds).
Alias writes are last-writer-wins; every task that moves aliases (``ftops_canary``'s review,
``ftops_rollback``, ``ftops_finetune``'s deploy) runs in the one-slot Airflow pool ``ftops_aliases``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ftops.registry.models import (
    CANARY,
    CHAMPION,
    PREVIOUS,
    alias_version,
    client,
    model_name,
    set_tags,
    store_errors,
)

log = logging.getLogger(__name__)


def deploy(task_type: str, version: str, traffic_percent: int) -> str:
    """Put a gated version into service and return what happened.

    The first version of a task type to pass the gate becomes ``champion`` directly: there is no model in
    service to compare live traffic against. Later ones become ``canary`` with ``traffic_percent``, at the
    first ramp step, deployed now. Deploying the version that already is the canary again (a retry) changes
    nothing, so its ramp is not restarted.
    """
    c = client()
    name = model_name(task_type)
    champion = alias_version(task_type, CHAMPION)
    if champion is None or str(champion.version) == str(version):
        c.set_registered_model_alias(name, CHAMPION, version)
        set_tags(task_type, version, {"deployment": "champion", "traffic_percent": 100})
        return "champion"
    canary = alias_version(task_type, CANARY)
    if canary is not None and str(canary.version) == str(version):
        return "canary"
    set_tags(task_type, version, {"deployment": "canary", "traffic_percent": traffic_percent, "ramp_step": 0,
                                  "deployed_at": datetime.now(UTC).isoformat()})  # fmt: skip
    c.set_registered_model_alias(name, CANARY, version)
    return "canary"


def _is_canary(task_type: str, version: str) -> bool:
    canary = alias_version(task_type, CANARY)
    return canary is not None and str(canary.version) == str(version)


def ramp_canary(task_type: str, version: str, *, step: int, traffic_percent: int, started_at: str, reason: str) -> bool:
    """Move the canary ``version`` to ramp ``step`` (0-based) with ``traffic_percent`` of the traffic.

    The router reads the share from the version's ``traffic_percent`` tag (cached for a few seconds). The
    share is written before the step marks (``ramp_started_at``, then ``ramp_step``), so a crash in between
    repeats the ramp rather than skipping a share.

    Args:
        task_type: The task type.
        version: The version judged; nothing happens unless it is still the canary.
        step: The step to move to.
        traffic_percent: Its share.
        started_at: When the step starts (ISO 8601): its window is measured from here.
        reason: Why (tagged as ``ramp_reason``).

    Returns:
        True when the canary is at ``step`` or later now (moved by this call, or already by another review or
        an earlier attempt: a no-op); False when the version is no longer the canary (nothing done).
    """
    canary = alias_version(task_type, CANARY)
    if canary is None or str(canary.version) != str(version):
        log.warning("%s: canary is %s, not the judged version %s: not ramping", model_name(task_type),
                    canary.version if canary else "none", version)  # fmt: skip
        return False
    current = int((canary.tags or {}).get("ramp_step") or 0)
    if current >= step:
        log.info("%s v%s is already at ramp step %d: nothing to do", model_name(task_type), version, current)
        return True
    set_tags(task_type, version, {"traffic_percent": traffic_percent, "ramp_reason": reason[:4000],
                                  "ramp_started_at": started_at, "ramp_step": step})  # fmt: skip
    return True


def promote_canary(task_type: str, version: str | None = None, *, reason: str | None = None) -> str | None:
    """Canary becomes champion; the old champion becomes ``previous``.

    Args:
        task_type: The task type.
        version: The version judged; default whatever the canary is now.
        reason: Why (tagged as ``promote_reason``).

    Returns:
        The new champion version; the same when ``version`` already is champion (promoted before: a no-op,
        which also finishes a promotion interrupted after the champion moved); None when ``version`` is
        neither canary nor champion (another review retired or replaced it: nothing is moved).

    Raises:
        LookupError: No ``version`` given and there is no canary.
    """
    c = client()
    name = model_name(task_type)
    canary = alias_version(task_type, CANARY)
    if version is None:
        if canary is None:
            raise LookupError(f"{name} has no canary to promote")
        version = str(canary.version)
    version = str(version)
    champion = alias_version(task_type, CHAMPION)
    if champion is not None and str(champion.version) == version:
        _drop_canary_alias(task_type, version)
        return version
    if canary is None or str(canary.version) != version:
        log.warning("%s: canary is %s, not the judged version %s: not promoting", name,
                    canary.version if canary else "none", version)  # fmt: skip
        return None
    if champion is not None:
        c.set_registered_model_alias(name, PREVIOUS, champion.version)
        set_tags(task_type, champion.version, {"deployment": "previous", "traffic_percent": 0})
    # Champion first, then drop the canary alias: in between both point at one version, which the router
    # serves as champion, and a retry finishes the move (above).
    c.set_registered_model_alias(name, CHAMPION, version)
    tags: dict[str, object] = {"deployment": "champion", "traffic_percent": 100}
    tags["promoted_at"] = datetime.now(UTC).isoformat()
    if reason:
        tags["promote_reason"] = reason[:4000]
    set_tags(task_type, version, tags)
    _drop_canary_alias(task_type, version)
    return version


def _drop_canary_alias(task_type: str, version: str) -> None:
    # Re-read right before deleting: the delete removes whatever the alias points at by then.
    if _is_canary(task_type, version):
        client().delete_registered_model_alias(model_name(task_type), CANARY)


def retire_canary(task_type: str, reason: str, version: str | None = None) -> str | None:
    """Remove the canary alias (roll back the canary) and tag the version with why.

    Args:
        task_type: The task type.
        reason: Why (tagged as ``rollback_reason``).
        version: The version judged; nothing happens unless it is still the canary. Default: whatever the
            canary is now (a manual rollback).

    Returns:
        The retired version (also when ``version`` was retired before: a no-op), or None when there was
        nothing to retire or ``version`` is no longer the canary (another review promoted or replaced it).
    """
    canary = alias_version(task_type, CANARY)
    if canary is None or (version is not None and str(canary.version) != str(version)):
        if version is None:
            return None
        tags = client().get_model_version(model_name(task_type), str(version)).tags or {}
        if tags.get("deployment") == "rolled_back":
            return str(version)
        log.warning("%s: canary is %s, not the judged version %s: not retiring", model_name(task_type),
                    canary.version if canary else "none", version)  # fmt: skip
        return None
    version = str(canary.version)
    # Tag first: the version's traffic goes to 0 at once, even if the alias delete below fails.
    set_tags(task_type, version, {"deployment": "rolled_back", "traffic_percent": 0, "rollback_reason": reason[:4000],
                                  "rolled_back_at": datetime.now(UTC).isoformat()})  # fmt: skip
    _drop_canary_alias(task_type, version)
    return version


# A rollback records its move on the versions before it writes an alias, so a retry finishes the same move:
RESTORE_TO = "ftops.restore_to"  # on the champion being replaced, until the move is done: the target
RESTORED_FROM = "ftops.restored_from"  # on the target: the champion it replaces
RESTORE_KEY = "ftops.restore_key"  # on the target: the request (DAG run) that moves it


class ChampionMovedError(ValueError):
    """The champion changed while a rollback was under way (another writer moved it): nothing was changed."""


@dataclass(frozen=True)
class RestorePlan:
    """A rollback resolved once: from which champion to which version, and how far an earlier attempt got.

    Attributes:
        old: The champion it starts from ("" when there is none).
        new: The version to restore.
        stage: ``start`` (nothing written yet), ``resume`` (an earlier attempt recorded this move and crashed
            before the champion moved) or ``finish`` (the champion moved; ``previous`` and tags may remain).
    """

    old: str
    new: str
    stage: Literal["start", "resume", "finish"]


def plan_restore(task_type: str, to_version: str | None = None, *, key: str | None = None) -> RestorePlan:
    """Resolve a rollback's target once, or find the move an interrupted attempt recorded.

    Args:
        task_type: The task type.
        to_version: The version to restore; None: the move an earlier attempt recorded on the champion
            (``ftops.restore_to``), else the ``previous`` alias.
        key: Names the request (the DAG run): a retry with the same key after the champion moved finishes
            that move instead of rolling back again.

    Raises:
        LookupError: No ``to_version``, nothing recorded and no ``previous`` alias; or an unknown version.
    """
    name = model_name(task_type)
    champion = alias_version(task_type, CHAMPION)
    old = str(champion.version) if champion else ""
    tags = dict(champion.tags or {}) if champion else {}
    came_from = tags.get(RESTORED_FROM)
    if came_from and (to_version is None or str(to_version) == old):
        # The champion is a restored version: this request's own move (same key), or one whose replaced
        # champion still carries the intent (the attempt crashed after the champion moved).
        mine = key is not None and tags.get(RESTORE_KEY) == key
        if mine or _tag(task_type, came_from, RESTORE_TO) == old:
            return RestorePlan(came_from, old, "finish")
    if to_version is None and tags.get(RESTORE_TO):
        return RestorePlan(old, tags[RESTORE_TO], "resume")
    if to_version is None:
        previous = alias_version(task_type, PREVIOUS)
        if previous is None:
            raise LookupError(f"{name} has no 'previous' alias; name a version to roll back to")
        to_version = str(previous.version)
    target = None
    with store_errors(f"read {name} version {to_version}", missing_ok=True):
        target = client().get_model_version(name, str(to_version))
    if target is None:
        raise LookupError(f"{name} has no version {to_version}")
    return RestorePlan(old, str(to_version), "start")


def restore_champion(
    task_type: str, to_version: str | None = None, *, key: str | None = None, plan: RestorePlan | None = None
) -> tuple[str, str]:
    """Make ``to_version`` (default: the ``previous`` alias) champion again; returns (old, new) versions.

    The move is recorded before any alias is written (``ftops.restore_to`` on the replaced champion,
    ``ftops.restored_from`` and ``ftops.restore_key`` on the target), the champion alias is written only if
    it still points at the champion the rollback started from (compare-and-set; MLflow itself has none, so
    alias writers share one pool, ``ftops_aliases``), then ``champion``, then ``previous``, then the tags,
    and last the intent is removed. A retry after a crash anywhere resolves the same move
    (:func:`plan_restore`) and finishes it: the restored version stays champion and ``previous`` ends on the
    replaced champion, as after an uninterrupted rollback.

    Args:
        task_type: The task type.
        to_version: The version to restore (see :func:`plan_restore`).
        key: Names the request, so its retries are recognised.
        plan: A plan already made (and checked) by the caller; default: made here.

    Raises:
        LookupError: There is no previous version to go back to.
        ChampionMovedError: The champion moved to another version since the plan was made.
    """
    c = client()
    name = model_name(task_type)
    plan = plan or plan_restore(task_type, to_version, key=key)
    old, new = plan.old, plan.new
    if plan.stage != "finish":
        if old and old != new:
            set_tags(task_type, old, {RESTORE_TO: new})
        set_tags(task_type, new, {RESTORED_FROM: old, RESTORE_KEY: key or ""})
        champion = alias_version(task_type, CHAMPION)
        now = str(champion.version) if champion else ""
        if now not in (old, new):
            if old and old != new:
                c.delete_model_version_tag(name, old, RESTORE_TO)
            raise ChampionMovedError(f"the champion of {name} moved from v{old} to v{now} while rolling back to "
                                     f"v{new}: nothing was changed; decide again")  # fmt: skip
        c.set_registered_model_alias(name, CHAMPION, new)
    if old and old != new:
        c.set_registered_model_alias(name, PREVIOUS, old)
        set_tags(task_type, old, {"deployment": "rolled_back", "traffic_percent": 0})
    set_tags(task_type, new, {"deployment": "champion", "traffic_percent": 100,
                              "restored_at": datetime.now(UTC).isoformat()})  # fmt: skip
    if old and old != new and _tag(task_type, old, RESTORE_TO) is not None:
        c.delete_model_version_tag(name, old, RESTORE_TO)  # the move is done
    log.info("%s champion restored: v%s -> v%s (%s)", name, old or "none", new, plan.stage)
    return old, new


def _tag(task_type: str, version: str, key: str) -> str | None:
    return (client().get_model_version(model_name(task_type), version).tags or {}).get(key)
