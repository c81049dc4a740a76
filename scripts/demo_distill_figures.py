"""The distillation demo's figures (``make demo-distill``): per task type, the student (the latest fine-tuned
version) against its teacher (the first upstream version), from the gate's evaluation on the frozen eval set and
from the calls both served through the gateway.

    python scripts/demo_distill_figures.py TASK_TYPE...

Accuracy share: the student's eval-set accuracy over the teacher's, with the 95 % CI of the paired gain divided by
the teacher's accuracy (the teacher's own sampling error is left out). Cost share: the student's cost per 1 000
calls over the teacher's, as the gate measured it (eval set) and as the warehouse logged it (served calls).
"""

from __future__ import annotations

import json
import sys

import mlflow

from ftops.cli.common import engine_of, warehouse_url
from ftops.core.config import load_config
from ftops.pipeline.operations import cost_reader
from ftops.registry import models as registry
from ftops.registry.upstream import UPSTREAM


def _share(mine: float | None, theirs: float | None) -> str:
    return f"{mine / theirs:.2%}" if mine is not None and theirs else "n/a"


def figures(task_type: str, cost) -> list[str]:  # noqa: ANN001 - cost_reader's callable
    versions = sorted(registry.versions(task_type), key=lambda v: int(v.version))
    upstream = [v for v in versions if (v.tags or {}).get("backend") == UPSTREAM]
    students = [v for v in versions if (v.tags or {}).get("backend") not in (None, UPSTREAM)]
    if not upstream or not students:
        return [f"{task_type}: no upstream teacher and student pair (nothing trained yet?)"]
    teacher, student = upstream[0], students[-1]
    champion = registry.alias_version(task_type, registry.CHAMPION)
    role = "champion" if champion and champion.version == student.version else student.tags.get("deployment", "not promoted")
    report = mlflow.artifacts.load_dict(f"runs:/{student.run_id}/evaluation/report.json")
    y, mine, theirs = report["yardstick"], report["candidate_metrics"], report["baseline_metrics"]
    base, (low, high) = y["accuracy_baseline"], y["gain_ci"]
    served_mine, served_theirs = cost(task_type, str(student.version)), cost(task_type, str(teacher.version))
    lines = [
        f"{task_type}: student v{student.version} ({role}; gate: {report['gate']['decision']}) vs teacher "
        f"v{teacher.version} ({teacher.tags.get('upstream.model')}), on {y['tag']} ({int(mine['n'])} rows)",
        f"  accuracy {y['accuracy']:.3f} vs {base:.3f}: {y['accuracy'] / base:.1%} of the teacher's "
        f"(95 % CI {(base + low) / base:.1%} to {(base + high) / base:.1%}; goal ≥ 98 %)",
        f"  cost per 1 000 calls, evaluation: {mine['cost_per_1k_calls']:.4g} vs {theirs['cost_per_1k_calls']:.4g} = "
        f"{_share(mine['cost_per_1k_calls'], theirs['cost_per_1k_calls'])} of the teacher's (goal ≤ 10 %)",
        f"  cost per 1 000 calls, served: {served_mine if served_mine is None else f'{served_mine:.4g}'} vs "
        f"{served_theirs if served_theirs is None else f'{served_theirs:.4g}'} = {_share(served_mine, served_theirs)}",
        f"  p95 latency, evaluation: {mine['latency_p95_ms']:.0f} ms vs {theirs['latency_p95_ms']:.0f} ms",
    ]
    rows = mlflow.artifacts.load_text(f"runs:/{student.run_id}/evaluation/outputs.jsonl").splitlines()[:3]
    for row in map(json.loads, rows):  # what the student says, beside the teacher
        lines.append(f"    {row['prompt'][:60]!r} -> student {row['candidate'][:60]!r}, teacher {row['baseline'][:60]!r}")
    return lines


def main(task_types: list[str]) -> int:
    cfg = load_config()
    cost = cost_reader(engine_of(warehouse_url()), cfg)
    for task_type in task_types:
        print("\n".join(figures(task_type, cost)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
