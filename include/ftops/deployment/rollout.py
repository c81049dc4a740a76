"""Moving registry aliases to put versions in and out of service: deploy (champion or canary), ramp a canary's
share, promote a canary, retire a canary, restore a champion. Each move also tags the versions it touches.

Canary moves name the version they judged and act only while the ``canary`` alias still points at it, so two
overlapping reviews (or a retry after a crash) cannot promote, ramp or retire a version they did not judge,
and repeating a finished move is a no-op. MLflow has no transactions: each move re-reads the alias right
before it writes, but another writer can still move the alias between that read and the write (milliseconds).
Alias writes are last-writer-wins; serialise the writers (``ftops_canary`` runs one at a time,
``max_active_runs=1``) for a guarantee.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ftops.registry.models import CANARY, CHAMPION, PREVIOUS, alias_version, client, model_name, set_tags

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


def restore_champion(task_type: str, to_version: str | None = None) -> tuple[str, str]:
    """Make ``to_version`` (default: the ``previous`` alias) champion again; returns (old, new) versions.

    Raises:
        LookupError: There is no previous version to go back to.
    """
    c = client()
    name = model_name(task_type)
    if to_version is None:
        previous = alias_version(task_type, PREVIOUS)
        if previous is None:
            raise LookupError(f"{name} has no 'previous' alias; name a version to roll back to")
        to_version = str(previous.version)
    c.get_model_version(name, to_version)  # raises for an unknown version
    champion = alias_version(task_type, CHAMPION)
    old = str(champion.version) if champion else ""
    if old and old != to_version:
        c.set_registered_model_alias(name, PREVIOUS, old)
        set_tags(task_type, old, {"deployment": "rolled_back", "traffic_percent": 0})
    c.set_registered_model_alias(name, CHAMPION, to_version)
    set_tags(task_type, to_version, {"deployment": "champion", "traffic_percent": 100})
    return old, to_version
