"""Moving registry aliases to put versions in and out of service: deploy (champion or canary), promote a
canary, retire a canary, restore a champion. Each move also tags the versions it touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftops.registry.models import CANARY, CHAMPION, PREVIOUS, alias_version, client, model_name, set_tags

if TYPE_CHECKING:
    pass


def deploy(task_type: str, version: str, traffic_percent: int) -> str:
    """Put a gated version into service and return what happened.

    The first version of a task type to pass the gate becomes ``champion`` directly: there is no model in
    service to compare live traffic against. Later ones become ``canary`` with ``traffic_percent``.
    """
    c = client()
    name = model_name(task_type)
    champion = alias_version(task_type, CHAMPION)
    if champion is None or str(champion.version) == str(version):
        c.set_registered_model_alias(name, CHAMPION, version)
        set_tags(task_type, version, {"deployment": "champion", "traffic_percent": 100})
        return "champion"
    c.set_registered_model_alias(name, CANARY, version)
    set_tags(task_type, version, {"deployment": "canary", "traffic_percent": traffic_percent})
    return "canary"


def promote_canary(task_type: str) -> str:
    """Canary becomes champion; the old champion becomes ``previous``. Returns the new champion version."""
    c = client()
    name = model_name(task_type)
    canary = alias_version(task_type, CANARY)
    if canary is None:
        raise LookupError(f"{name} has no canary to promote")
    champion = alias_version(task_type, CHAMPION)
    if champion is not None:
        c.set_registered_model_alias(name, PREVIOUS, champion.version)
        set_tags(task_type, champion.version, {"deployment": "previous", "traffic_percent": 0})
    c.set_registered_model_alias(name, CHAMPION, canary.version)
    c.delete_registered_model_alias(name, CANARY)
    set_tags(task_type, canary.version, {"deployment": "champion", "traffic_percent": 100})
    return str(canary.version)


def retire_canary(task_type: str, reason: str) -> str | None:
    """Remove the canary alias (roll back the canary) and record why; returns the version or None."""
    canary = alias_version(task_type, CANARY)
    if canary is None:
        return None
    client().delete_registered_model_alias(model_name(task_type), CANARY)
    set_tags(task_type, canary.version, {"deployment": "rolled_back", "traffic_percent": 0, "rollback_reason": reason})
    return str(canary.version)


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
