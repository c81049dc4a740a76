"""Eval sets in the pipeline: importing a labelled file as a new version, and keeping every model version's
figure on the latest version, so that a chart of a task type's versions compares like with like.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.core.names import check_task_type
from ftops.datasets.evalsets import EvalSets, as_example
from ftops.pipeline.common import dataset_registry
from ftops.registry import models as registry

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)


def import_evalset(
    cfg: FtopsConfig, engine: sa.Engine, task_type: str, lines: Iterable[str | bytes], *, source_name: str = "file"
) -> dict[str, Any]:
    """Import labelled rows as the task type's next eval-set version (the latest version's rows plus the new).

    Every line is accepted, a duplicate (of an earlier line or of a row the eval set holds) or rejected with its
    line number and reason (:func:`ftops.curation.evalset_rows.parse_import`). Nothing new (every line a
    duplicate or rejected) publishes nothing. Publishing holds the versioning lock, as curation's does.

    Returns:
        ``{"task_type", "evalset" (tag or None), "created", "rows", **the import report}``.

    Raises:
        InvalidNameError: The task type is not a valid name.
        RuntimeError: DVC or git failed.
    """
    from ftops.curation.evalset_rows import parse_import
    from ftops.warehouse.locks import versioning_lock

    check_task_type(task_type)
    evalsets = EvalSets(dataset_registry(cfg))
    with versioning_lock(engine, what=f"importing an eval set of {task_type}"):
        latest = evalsets.latest(task_type)
        existing = evalsets.read(latest) if latest else []
        report = parse_import(lines, existing)
        summary: dict[str, Any] = {"task_type": task_type, "source": source_name, **report.as_dict()}
        if not report.accepted:
            log.warning("%s: no new row in %s: eval set unchanged (%s)", task_type, source_name,
                        latest.tag if latest else "none yet")  # fmt: skip
            return {**summary, "evalset": latest.tag if latest else None, "created": False, "rows": len(existing)}
        version = evalsets.publish(task_type, [*existing, *report.accepted])
    log.info("%s: eval set %s, %d rows (%d new from %s; %d duplicates, %d rejected)", task_type, version.tag,
             len(existing) + len(report.accepted), len(report.accepted), source_name, len(report.duplicates),
             len(report.rejected))  # fmt: skip
    return {**summary, "evalset": version.tag, "created": version.created, "rows": len(existing) + len(report.accepted)}


def evaluate_on_evalset(
    cfg: FtopsConfig,
    task_type: str,
    *,
    versions: Iterable[str] | None = None,
    limit: int = 3,
    api_client: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Record the accuracy of model versions on the task type's latest eval set, each version once.

    The champion comes first, then every other registered version newest first, up to ``limit`` evaluations per
    call (older versions are filled in lazily, a few per run). A version whose figure is recorded (tag
    ``evalset_accuracy.v<N>``) is never evaluated again, so a retry or a re-run does no work twice.

    Returns:
        ``{"task_type", "evalset", "evaluated": {version: accuracy}, "recorded": {version: accuracy},
        "pending": [versions left for a later run]}``; ``evalset`` None when the task type has none.
    """
    from ftops.pipeline.finetune_eval import evaluate_versions, version_spec
    from ftops.pipeline.yardstick import evalset_figure_tag
    from ftops.registry.yardstick import like_for_like

    evalsets = EvalSets(dataset_registry(cfg))
    latest = evalsets.latest(task_type)
    out: dict[str, Any] = {"task_type": task_type, "evalset": latest.tag if latest else None, "evaluated": {},
                           "recorded": {}, "pending": []}  # fmt: skip
    if latest is None:
        return out
    champion = registry.alias_version(task_type, registry.CHAMPION)
    every = sorted(registry.versions(task_type), key=lambda mv: int(mv.version), reverse=True)
    if versions is not None:
        wanted = {str(v) for v in versions}
        every = [mv for mv in every if str(mv.version) in wanted]
    if champion is not None:
        every.sort(key=lambda mv: str(mv.version) != str(champion.version))  # stable: champion first
    todo = []
    for mv in every:
        figure = like_for_like(mv.tags).get(latest.version)
        if figure is not None:
            out["recorded"][str(mv.version)] = figure
        elif mv.tags.get("backend") == "upstream":
            continue  # a hosted model served as is: nothing of ours to evaluate
        else:
            todo.append(mv)
    out["pending"] = [str(mv.version) for mv in todo[limit:]]
    todo = todo[:limit]
    if not todo:
        return out
    rows = [as_example(r) for r in evalsets.read(latest)]
    with tempfile.TemporaryDirectory() as tmp:
        results = evaluate_versions([version_spec(mv) for mv in todo], rows, cfg, tmp, api_client)
    for mv, result in zip(todo, results, strict=True):
        accuracy = round(float(result.metrics["accuracy"]), 4)
        registry.set_tags(task_type, str(mv.version), {evalset_figure_tag(latest.version): accuracy})
        out["evaluated"][str(mv.version)] = accuracy
        log.info("%s v%s on %s (%d rows): accuracy %.3f", registry.model_name(task_type), mv.version, latest.tag,
                 len(rows), accuracy)  # fmt: skip
    return out


def measure_task_types(
    cfg: FtopsConfig, task_types: Iterable[str], *, api_client: Callable[[], Any] | None = None
) -> list[dict[str, Any]]:
    """:func:`evaluate_on_evalset` for each task type; one that fails is logged and reported with its error, and
    the others are still measured (a broken model version must not stop governance)."""
    results = []
    for task_type in task_types:
        try:
            results.append(evaluate_on_evalset(cfg, task_type, api_client=api_client))
        except Exception as exc:  # noqa: BLE001 - reported per task type; the next run tries again
            log.exception("%s: measuring on the latest eval set failed", task_type)
            results.append({"task_type": task_type, "error": f"{type(exc).__name__}: {exc}"[:500]})
    return results


def read_lines(path: str) -> list[bytes]:
    """The lines of an import file as bytes (``-``: standard input); each is decoded, or rejected, on its own."""
    import sys

    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return data.splitlines()
