"""``ftops summary``: per task type the latest dataset version and its accounting, every registered version on
one yardstick (a table of their accuracy on one eval-set version, :mod:`ftops.pipeline.comparison`), then each
version's gate figures, reasons, service state and first test answers, and what users saw of each served
version. Text for a terminal; tags and answers are untrusted, so control characters never reach it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.core.text import printable
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.comparison import compare_versions, version_aliases
from ftops.pipeline.status_text import figure_lines, yardstick_table
from ftops.registry import models as registry
from ftops.registry.yardstick import OWN_SPLIT

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)
SHOWN_ANSWERS = 3
SHOWN_EARLIER = 3  # earlier dataset versions, one line each
SHOWN_METRICS = ("accuracy", "perplexity", "bleu", "rouge_l", "latency_p50_ms")


def summary_text(cfg: FtopsConfig, engine: sa.Engine) -> str:
    """The summary of every task type that has a dataset version or a registered model.

    Args:
        cfg: The config (dataset registry, log table, the gate's CI level).
        engine: The warehouse (live traffic of the served versions).
    """
    datasets = dataset_registry(cfg)
    dataset_types = datasets.task_types()
    lines = ["", "FT-Ops summary", "=============="]
    for task_type in sorted(set(dataset_types) | set(registry.registered_task_types())):
        if task_type in dataset_types:
            lines += _dataset_lines(datasets, task_type)
        else:
            lines.append(f"\n[{task_type}] no dataset version")
        lines += _model_lines(cfg, task_type)
        lines += _live_lines(engine, cfg.interactions_table, task_type)
    return printable("\n".join(lines) + "\n")  # tags and answers are untrusted text


def _dataset_lines(datasets: Any, task_type: str) -> list[str]:
    versions = datasets.versions(task_type)
    latest = versions[-1]
    meta = datasets.read_metadata(latest)
    accounting = meta.get("accounting") or {}  # a version published by hand may carry no curation record
    return [
        f"\n[{task_type}] dataset {latest.tag}: {meta['train_rows']} train / {meta['test_rows']} test "
        f"(content {latest.content_hash[:12]}, {len(versions)} version(s))",
        "  accounting of its run: " + (", ".join(f"{k}={v}" for k, v in accounting.items()) or "none"),
        "  targets by source: " + (", ".join(f"{split} {counts}" for split, counts in
                                            (meta.get("source_counts") or {}).items()) or "not recorded")
        + f"; {meta.get('preference_rows', 0)} preference pairs",
        f"  logs up to {meta.get('window', {}).get('until', '?')}; diversity "
        f"{meta.get('diversity_score', 0):.3f}; scrubbed {meta.get('scrubbed') or 'nothing'}",
        _teacher_line(meta.get("teacher")),
        *(_earlier_line(v, datasets.read_metadata(v)) for v in reversed(versions[-1 - SHOWN_EARLIER:-1])),
    ]


def _earlier_line(version: Any, meta: dict[str, Any]) -> str:
    """One line per earlier dataset version (a cycle before the latest): its size, targets and teacher."""
    teacher = meta.get("teacher") or {}
    asked = (f"teacher {teacher.get('calls', 0)} calls, cost {teacher.get('cost', 0):.4f}" if teacher
             else "teacher not asked")  # fmt: skip
    targets = (meta.get("source_counts") or {}).get("train") or "not recorded"
    return (f"  earlier {version.tag}: {meta.get('train_rows', '?')} train / {meta.get('test_rows', '?')} test; "
            f"train targets {targets}; {asked}")


def _teacher_line(teacher: dict[str, Any] | None) -> str:
    """The run's relabelling: calls, cost, verdicts (counts only)."""
    if not teacher:
        return "  teacher: not asked (teacher.enabled is off)"
    skipped = f"; {teacher['skipped_reason']}" if teacher.get("skipped_reason") else ""
    rejected = ", ".join(f"{k} {v}" for k, v in (teacher.get("rejected") or {}).items()) or "none"
    return (f"  teacher: {teacher.get('calls', 0)} calls ({teacher.get('cached', 0)} cached), cost "
            f"{teacher.get('cost', 0):.4f}; {teacher.get('accepted', 0)} of {teacher.get('candidates', 0)} failed or "
            f"low-rated prompts relabelled, {teacher.get('skipped_budget', 0)} left over budget, rejected: "
            f"{rejected}{skipped}")  # fmt: skip


def _model_lines(cfg: FtopsConfig, task_type: str) -> list[str]:
    client = registry.client()
    found = sorted(registry.versions(task_type), key=lambda m: int(m.version))
    if not found:
        return ["  no registered model version yet"]
    aliases = version_aliases(task_type)  # search results carry no aliases
    runs = {str(mv.version): _run_metrics(client, str(mv.run_id)) for mv in found if mv.run_id}
    comparison = compare_versions(task_type, found, aliases=aliases, run_metrics=runs, confidence=cfg.gate.confidence)
    points = {p["version"]: p for p in comparison["points"]}
    lines = [f"  every version, {comparison['title']}:", *yardstick_table(comparison, "    ")]
    for mv in found:
        t, p = dict(mv.tags or {}), points[str(mv.version)]
        held = ",".join(aliases.get(str(mv.version), [])) or "no alias"
        lines.append(f"  model {registry.model_name(task_type)} v{mv.version} [{held}] "
                     f"on {t.get('dataset_version')}: decision {t.get('decision', '?').upper()}")  # fmt: skip
        lines += figure_lines(p, "    ")
        for metric in SHOWN_METRICS:
            if f"metric.{metric}" in t:
                lines.append(f"    {metric:15s} {float(t[f'metric.{metric}']):10.3f}  vs baseline "
                             f"{float(t.get(f'baseline.{metric}', 'nan')):10.3f}  "
                             f"({t.get('baseline')}; {OWN_SPLIT})")  # fmt: skip
        if "trivial.accuracy" in t:
            lines.append(f"    {'trivial':15s} {float(t['trivial.accuracy']):10.3f}  ({t.get('trivial_baseline')})")
        lines.append("    why: " + t.get("reason", "").replace("; ", "\n         "))
        if t.get("deployment") and t.get("decision", "").lower() != "archive":
            live = [f"{k.removesuffix('_reason')}: {t[k]}" for k in ("ramp_reason", "promote_reason", "rollback_reason")
                    if t.get(k)]  # fmt: skip
            lines.append(f"    in service: {t['deployment']} (traffic {t.get('traffic_percent', '?')} %)"
                         + "".join(f"\n      last {x}" for x in live))  # fmt: skip
        lines += _answers(str(mv.run_id))
    return lines


def _run_metrics(client: Any, run_id: str) -> dict[str, float]:
    """A training run's metrics (where a gate on a test split logged its CI); none when the run was deleted."""
    with registry.store_errors(f"read run {run_id}", missing_ok=True):
        return dict(client.get_run(run_id).data.metrics)
    return {}


def _live_lines(engine: sa.Engine, table: str, task_type: str) -> list[str]:
    """What users saw of each served version of a task type (rows the gateway logged), oldest version first."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from ftops.warehouse.schema import log_tables
    from ftops.warehouse.state import live_metrics

    if not sa.inspect(engine).has_table(table):
        return ["  live traffic: none served through the gateway yet"]
    _, t, _, _ = log_tables(table)
    prefix = f"{registry.model_name(task_type)}/"
    with engine.connect() as conn:
        served = sorted(conn.scalars(sa.select(t.c.model_version).distinct().where(
            t.c.task_type == task_type, t.c.model_version.startswith(prefix, autoescape=True))),
            key=lambda v: int(v.rsplit("/", 1)[1]) if v.rsplit("/", 1)[1].isdigit() else 0)  # fmt: skip
    if not served:
        return ["  live traffic: none served through the gateway yet"]
    lines = ["  live traffic through the gateway:"]
    for name in served:
        m = live_metrics(engine, task_type, name, datetime(1970, 1, 1, tzinfo=UTC), table)
        rating = f"{m['mean_rating']:.2f} ({m['rated']} rated)" if m.get("mean_rating") is not None else "no ratings"
        lines.append(f"    {name}: {m['requests']} calls, error rate {m['error_rate']:.3f}, p95 "
                     f"{m['latency_p95_ms']:.0f} ms, mean rating {rating}, task success "
                     f"{m.get('task_success_rate', float('nan')):.3f}")  # fmt: skip
    return lines


def _answers(run_id: str) -> list[str]:
    """What the model said: its first test answers and how many distinct answers it gave (a model that says
    the same thing to every prompt shows here, whatever its score)."""
    import json

    import mlflow

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/outputs.jsonl")
    except Exception as exc:  # noqa: BLE001 - a summary line, not a failure: say what is missing
        return [f"    answers: not available ({type(exc).__name__})"]
    outputs = [json.loads(line) for line in text.splitlines() if line.strip()]
    distinct = len({o["candidate"] for o in outputs})
    references = len({o["reference"] for o in outputs})
    lines = [f"    answers: {distinct} distinct to {len(outputs)} test prompts (the references: {references} "
             f"distinct); the first {SHOWN_ANSWERS}:"]  # fmt: skip
    for o in outputs[:SHOWN_ANSWERS]:
        mark = "right" if o["candidate_correct"] else "wrong"
        lines.append(f"      {o['prompt'][:70]!r}\n        -> {o['candidate'][:90]!r} ({mark})")
    return lines
