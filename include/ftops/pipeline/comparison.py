"""A task type's registered versions side by side on one yardstick, with their roles: what ``ftops summary``,
``ftops status``, the FT-Ops page and ``explain_model`` show as "accuracy by version".

The tags are read by :func:`ftops.registry.yardstick.yardstick` (the one reader); this module adds what the
registry knows beyond a version's tags (its aliases) and what a caller already read (training-run metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ftops.registry import models as registry
from ftops.registry.yardstick import accuracy_by_version, yardstick

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

SHOWN = ("gate", "evalset_accuracy", "split", "own_split", "slice", "judge")


def version_aliases(task_type: str) -> dict[str, list[str]]:
    """version -> its aliases (``champion``, ``canary``, ``previous``), from one read of the registered model.

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    c = registry.client()
    name = registry.model_name(task_type)
    with registry.store_errors(f"read the aliases of {name}", missing_ok=True):
        out: dict[str, list[str]] = {}
        for alias, version in sorted(c.get_registered_model(name).aliases.items()):
            out.setdefault(str(version), []).append(alias)
        return out
    return {}


def role(aliases: Sequence[str], tags: Mapping[str, str]) -> str:
    """What a version is now: its aliases, else its ``deployment`` tag (``archived``, ``rolled_back``), else
    ``archived`` when its gate said so."""
    archived = "archived" if tags.get("decision") == "archive" else None
    return ",".join(aliases) or tags.get("deployment") or archived or "–"


def compare_versions(
    task_type: str,
    found: Sequence[ModelVersion] | None = None,
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    run_metrics: Mapping[str, Mapping[str, float]] | None = None,
    confidence: float | None = None,
) -> dict[str, Any]:
    """Every version of ``task_type`` on one yardstick (:func:`~ftops.registry.yardstick.accuracy_by_version`),
    each point with its role and its figures (the gate's yardstick and CI, the split, slice and judge figures).

    Args:
        task_type: The task type.
        found: The versions to show (default: every registered version).
        aliases: version -> aliases (default: read from the registry).
        run_metrics: version -> its training run's metrics, where the caller read them (the gain's CI of a gate
            that decided on a test split is only there).
        confidence: The gate's CI level, shown with each CI.

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    found = registry.versions(task_type) if found is None else found
    aliases = version_aliases(task_type) if aliases is None else aliases
    metrics = run_metrics or {}
    tags = {str(mv.version): dict(mv.tags or {}) for mv in found}
    sticks = {v: yardstick(t, run_metrics=metrics.get(v), confidence=confidence) for v, t in tags.items()}
    out = accuracy_by_version(task_type, sticks)
    for point in out["points"]:
        v = point["version"]
        point |= {"role": role(aliases.get(v, ()), tags[v]), **{k: sticks[v][k] for k in SHOWN}}
    return out
