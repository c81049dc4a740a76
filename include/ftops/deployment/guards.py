"""Guards on alias moves that a person asks for: which versions a rollback may put back in service.

One definition for every way in: the MCP ``request_rollback`` tool asks before it triggers ``ftops_rollback``,
and ``ftops_rollback``'s task asks again right before it moves an alias (a run triggered from the UI, the REST
API or the CLI passes the same checks). A refusal is a :class:`RollbackRefused` (a ``ValueError``): the DAG
task fails at once without retrying, with the guard's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftops.registry import models as registry

ERASURE_PENDING_TAG = "ftops.erasure_pending"


class RollbackRefused(ValueError):
    """The guard refuses the rollback; the message says why."""


@dataclass(frozen=True)
class RollbackCheck:
    """The guard's answer.

    Attributes:
        allowed: Whether the rollback may go ahead.
        reason: Why (one line, for people and the decision record).
        details: What it was decided on: champion, target, canary, the target's deployment and gate decision.
        target: The version the rollback would restore (None when there is none).
    """

    allowed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    target: str | None = None


def rollback_guard(task_type: str, to_version: int | str | None) -> RollbackCheck:
    """Whether rolling ``task_type`` back to ``to_version`` (default: the ``previous`` alias) is safe now.

    The target must exist, not be the champion or the canary, have passed the gate (not ``archived``, gate
    decision not ``archive``), have served before (a ``deployment`` tag), not be a canary that was rolled back
    without ever serving as champion, and not be trained on data since erased (``ftops.erasure_pending``).
    A canary in progress does not stop a rollback: ``ftops_rollback`` retires it first.

    Raises:
        RegistryUnavailableError: The registry could not be read (retryable: not a refusal).
    """
    name = registry.model_name(task_type)
    champion = registry.alias_version(task_type, registry.CHAMPION)
    if champion is None:
        return RollbackCheck(False, f"{name} has no champion: nothing to roll back")
    if to_version is None:
        target = registry.alias_version(task_type, registry.PREVIOUS)
        if target is None:
            return RollbackCheck(False, f"{name} has no 'previous' version: name the version to roll back to")
    else:
        target = None
        with registry.store_errors(f"read {name} version {to_version}", missing_ok=True):
            target = registry.client().get_model_version(name, str(to_version))
        if target is None:
            return RollbackCheck(False, f"{name} has no version {to_version}")
    v, t = str(target.version), dict(target.tags or {})
    canary = registry.alias_version(task_type, registry.CANARY)
    details = {"champion": str(champion.version), "target": v, "canary": str(canary.version) if canary else None,
               "target_deployment": t.get("deployment"), "target_decision": t.get("decision")}  # fmt: skip

    def no(reason: str) -> RollbackCheck:
        return RollbackCheck(False, reason, details, v)

    if v == str(champion.version):
        return no(f"v{v} is already the champion of {name}")
    if canary is not None and v == str(canary.version):
        return no(f"v{v} is the canary: ftops_canary promotes it when its ramp is done; a rollback restores an "
                  "earlier champion")  # fmt: skip
    if t.get("deployment") == "archived" or (t.get("decision") or "").lower() == "archive":
        return no(f"v{v} failed the deployment gate and was archived: {t.get('archive_reason', '')}".rstrip(": "))
    if not t.get("deployment"):
        return no(f"v{v} was never deployed: only a version that served before can be restored")
    if t.get("rollback_reason") and not t.get("promoted_at"):
        return no(f"v{v} was rolled back as a canary and never served as champion ({t['rollback_reason'][:200]})")
    if t.get(ERASURE_PENDING_TAG):
        return no(f"v{v} was trained on data that has since been erased ({t[ERASURE_PENDING_TAG][:200]}): "
                  "retrain instead")  # fmt: skip
    extra = f"; canary v{canary.version} will be retired" if canary else ""
    return RollbackCheck(True, f"v{v} served before and passed the gate{extra}", details, v)


def check_rollback(task_type: str, to_version: int | str | None) -> str:
    """The version a rollback may restore, or :class:`RollbackRefused` with the guard's reason.

    Raises:
        RollbackRefused: :func:`rollback_guard` says no.
    """
    check = rollback_guard(task_type, to_version)
    if not check.allowed or check.target is None:
        raise RollbackRefused(f"rollback of {registry.model_name(task_type)} refused: {check.reason}")
    return check.target
