"""``ftops status`` in a terminal: the dashboard of :func:`ftops.pipeline.status.collect_status` as text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ftops.core.text import printable
from ftops.pipeline.common import parse_time
from ftops.pipeline.status import one_line

# -- the terminal view --------------------------------------------------------------------------------------
SHOWN_METRICS = ("accuracy", "perplexity", "bleu", "rouge_l", "latency_p50_ms")


def render_status(status: dict[str, Any]) -> str:
    """The dashboard as text for a terminal: what :func:`collect_status` returned, one section per part."""
    now = datetime.fromisoformat(status["generated_at"])
    title = f"FT-Ops status {now:%Y-%m-%d %H:%M} UTC"
    lines = ["", title, "=" * len(title)]
    lines += [f"! {problem}" for problem in status["problems"].values()]
    lines += ["", "Active fine-tunes (ftops_finetune runs queued or running)"]
    active = status["active_finetunes"]
    if active is None:
        lines.append("  not available: the Airflow REST API did not answer")
    for run in active or []:
        lines += _active_lines(run)
    if active == []:
        lines.append("  none")
    lines += ["", "Models in service (MLflow registry aliases)"]
    models = status["models"]
    if models is None:
        lines.append("  not available: the MLflow registry did not answer")
    elif not models:
        lines.append("  no registered model yet")
    for m in models or []:
        lines += _model_lines(m, now)
    lines += _recent_lines(status["recent"])
    lines += ["", "Latest decisions (warehouse table ftops_decisions)"]
    decisions = status["decisions"]
    if decisions is None:
        lines.append("  not available: the warehouse did not answer")
    elif not decisions:
        lines.append("  none recorded yet")
    for d in decisions or []:
        verdict = "TRAIN" if d["train"] else "no"
        kind = "/".join(x for x in (d.get("kind"), d.get("policy")) if x)
        run = f" → run {d['run_id']}" if d.get("run_id") else ""
        lines.append(f"  {_when(d['decided_at'])}  {d['task_type']:14s} {verdict:5s} {kind}: "
                     f"{one_line(d['reason'], 110)}{run}")  # fmt: skip
    return printable("\n".join(lines) + "\n")  # reasons, notes and run ids are untrusted: no escapes reach a terminal


def _active_lines(run: dict[str, Any]) -> list[str]:
    rows = run.get("dataset_rows") or {}
    size = " / ".join(f"{n} {split}" for split, n in rows.items())
    lines = [f"  {run.get('task_type') or '?':14s} {run['dag_run_id']}  {run['state']}"
             + (f": {run['phase']}" if run.get("phase") else "")
             + (f"  dataset {run.get('dataset_version') or 'latest'}" + (f" ({size})" if size else ""))]  # fmt: skip
    p = run.get("progress")
    detail = []
    if run.get("backend"):
        detail.append(f"{run['backend']} on {run.get('base_model')}")
    if run.get("api_job_status"):
        detail.append(f"API job {run['api_job_status']}")
    if p and p.get("fraction") is not None:
        step = f"step {p['step']}" + (f"/{p['max_steps']}" if p.get("max_steps") else "") if p.get("step") else ""
        detail.append(" ".join(x for x in (step, f"({p['fraction'] * 100:.0f} %)") if x))
    if p and p.get("train_loss") is not None:
        detail.append(f"loss {p['train_loss']:.3f}, {p.get('tokens_per_s') or 0:.0f} tokens/s")
    if p and p.get("eta_s") is not None and p.get("fraction") != 1.0:
        detail.append(f"ETA {_span(p['eta_s'])}")
    if detail:
        lines.append("      " + "; ".join(detail))
    if run.get("reason"):
        lines.append(f"      why: {one_line(run['reason'], 110)}")
    return lines


def _model_lines(m: dict[str, Any], now: datetime) -> list[str]:
    lines = [f"  [{m['task_type']}] {m['model']}"]
    champion, canary = m["champion"], m["canary"]
    if champion is None:
        lines.append("    no champion: nothing serves this task type")
    else:
        lines += _version_lines("champion", champion)
        if champion.get("live"):
            lines.append(f"      live since {_when(champion['live']['since'])}: {_live(champion['live'])}")
    if canary is None:
        lines.append("    no canary")
        return lines
    lines += _version_lines("canary", canary)
    ramp = "→".join(str(p) for p in canary["ramp_percent"])
    lines.append(f"      traffic {canary.get('traffic_percent')} %, ramp step {canary['ramp_step']}/"
                 f"{canary['ramp_steps']} ({ramp} %, {canary['step_hours']:g} h each)")  # fmt: skip
    if "earliest_promotion_at" in canary:
        lines.append(f"      earliest promotion in {_span(canary['hours_to_promotion'] * 3600)} "
                     f"({_when(canary['earliest_promotion_at'])}), if each step gets "
                     f"{canary['min_requests_per_step']} calls and stays healthy")  # fmt: skip
    if canary.get("live"):
        lines.append(f"      live since deployment: {_live(canary['live'])}")
    if canary.get("ramp_reason"):
        lines.append(f"      last review: {one_line(canary['ramp_reason'], 110)}")
    return lines


def _version_lines(role: str, v: dict[str, Any]) -> list[str]:
    lines = [f"    {role:8s} v{v['version']} on {v.get('dataset_version') or '?'} ({v.get('backend') or '?'}; gate "
             f"{(v.get('decision') or '?').upper()})"]  # fmt: skip
    shown = [f"{k} {x['value']:.3f} vs {x['baseline']:.3f}" if x["baseline"] is not None else f"{k} {x['value']:.3f}"
             for k, x in v["metrics"].items() if k in SHOWN_METRICS and x["value"] is not None]  # fmt: skip
    if shown:
        lines.append(f"      {', '.join(shown)} (baseline: {v.get('baseline') or '?'})")
    return lines


def _live(m: dict[str, Any]) -> str:
    rating = f"rating {m['mean_rating']:.2f} ({m['rated']} rated)" if m.get("mean_rating") is not None else "no ratings"
    return (f"{m['requests']} calls, error rate {m['error_rate']:.3f}, p95 {m['latency_p95_ms']:.0f} ms, {rating}, "
            f"task success {m['task_success_rate']:.3f}")  # fmt: skip


def _recent_lines(recent: dict[str, Any] | None) -> list[str]:
    if recent is None:
        return ["", "Recent fine-tunes", "  not available: the Airflow REST API did not answer"]
    n = recent["succeeded"] + recent["failed"]
    head = f"Recent fine-tunes (ended in the last {recent['days']} days): "
    if not n:
        return ["", head + "none"]
    avg = f", average successful run {_span(recent['avg_duration_s'])}" if recent["avg_duration_s"] else ""
    lines = ["", head + f"{recent['succeeded']} succeeded, {recent['failed']} failed "
             f"({recent['success_rate'] * 100:.0f} % success){avg}"]  # fmt: skip
    for r in recent["runs"]:
        made = (f" → v{r['version']} ({r.get('decision') or '?'}, {r.get('deployment') or '?'})"
                if r.get("version") else "")  # fmt: skip
        took = _span(r["duration_s"]) if r.get("duration_s") is not None else "?"
        lines.append(f"  {_when(r['ended_at'])}  {r['state']:7s} {r.get('task_type') or '?':14s} {r['dag_run_id']}  "
                     f"{took}{made}")  # fmt: skip
    return lines


def _when(value: str | None) -> str:
    t = parse_time(value)
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M}" if t else "?"


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
