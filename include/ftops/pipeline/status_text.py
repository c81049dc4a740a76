"""``ftops status`` in a terminal: the dashboard of :func:`ftops.pipeline.status.collect_status` as text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ftops.core.text import printable
from ftops.pipeline.common import parse_time
from ftops.pipeline.status import one_line
from ftops.registry.yardstick import OWN_SPLIT, SPLIT_WITHOUT_INCUMBENT

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
        return lines + _comparison_lines(m)
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
    return lines + _comparison_lines(m)


def _comparison_lines(m: dict[str, Any]) -> list[str]:
    comparison = m.get("accuracy_by_version")
    lines = _cost_lines(m.get("cost"))
    if not comparison or not comparison["points"]:
        return lines
    return [*lines, f"    every version, {comparison['title']}:", *yardstick_table(comparison, "      ")]


def _cost_lines(cost: dict[str, Any] | None) -> list[str]:
    """Cost per 1 000 calls of champion and canary and, where there was one, the saving against the first
    upstream version."""
    if not cost:
        return []
    shown = []
    for role in ("champion", "canary"):
        value, saving = cost.get(f"{role}_per_1k_calls"), cost.get(f"{role}_saving")
        if value is not None:
            shown.append(f"{role} {value:.4g}" + (f" (saving {saving:.1%})" if saving is not None else ""))
    first = cost.get("first_upstream")
    if first is not None:
        theirs = "unpriced" if first["per_1k_calls"] is None else f"{first['per_1k_calls']:.4g}"
        shown.append(f"first upstream v{first['version']} ({first['model']}) {theirs}")
    text = ", ".join(shown) or "no priced call (set gate.compute_cost_per_hour to price local models)"
    return [f"    cost per 1 000 calls: {text}"]


def _version_lines(role: str, v: dict[str, Any]) -> list[str]:
    lines = [f"    {role:8s} v{v['version']} on {v.get('dataset_version') or '?'} ({v.get('backend') or '?'}; gate "
             f"{(v.get('decision') or '?').upper()})"]  # fmt: skip
    lines += figure_lines(v["yardstick"], "      ")
    shown = [f"{k} {x['value']:.3f} vs {x['baseline']:.3f}" if x["baseline"] is not None else f"{k} {x['value']:.3f}"
             for k, x in v["metrics"].items() if k in SHOWN_METRICS and x["value"] is not None]  # fmt: skip
    if shown:
        lines.append(f"      {OWN_SPLIT}: {', '.join(shown)} (baseline: {v.get('baseline') or '?'})")
    return lines


# -- yardsticks (shared with ``ftops summary``) ---------------------------------------------------------------
def yardstick_table(comparison: dict[str, Any], indent: str = "    ") -> list[str]:
    """A task type's versions on one yardstick (:func:`ftops.pipeline.comparison.compare_versions`) as a table:
    version | role | accuracy on the eval-set version | yardstick of its gate | gain CI."""
    head = ["version", "role", comparison["column"], "yardstick of its gate", "gain CI"]
    rows = [[f"v{p['version']}", p["role"], _point(p, comparison), p["gate"]["yardstick"], gain_text(p["gate"])]
            for p in comparison["points"]]  # fmt: skip
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head) - 1)]
    return [indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + str(r[-1])
            for r in [head, *rows]]  # fmt: skip


def _point(p: dict[str, Any], comparison: dict[str, Any]) -> str:
    if p["accuracy"] is None:
        return p["note"] or "–"
    other = p["yardstick"] != comparison["yardstick"]  # a fallback point measured on another set: say which
    return f"{p['accuracy']:.3f}" + (f" ({p['yardstick']})" if other else "")


def gain_text(gate: dict[str, Any]) -> str:
    """``+0.020, 95 % CI [+0.010, +0.040]`` of a gate's figures (what is known of them)."""
    parts = [f"{gate['gain']:+.3f}"] if gate.get("gain") is not None else []
    ci = gate.get("gain_ci")
    if ci:
        level = f"{ci['confidence'] * 100:.0f} % " if ci.get("confidence") else ""
        parts.append(f"{level}CI [{ci['low']:+.3f}, {ci['high']:+.3f}]")
    return ", ".join(parts) or "–"


def figure_lines(y: dict[str, Any], indent: str) -> list[str]:
    """A version's figures, each with its yardstick (:func:`ftops.registry.yardstick.yardstick`): the gate's
    comparison, the split without incumbent rows, the failure slice and the judge."""
    g, lines = y["gate"], []
    if g["kind"] != "own_split" and g["accuracy"] is not None:
        against = ""
        if g["against_accuracy"] is not None:
            against = f" vs {g['against_accuracy']:.3f} ({g.get('against') or 'champion'})"
        lines.append(f"{indent}gate on {g['yardstick']}: accuracy {g['accuracy']:.3f}{against}; gain {gain_text(g)}")
    elif g["kind"] == "own_split":
        lines.append(f"{indent}gate on its {OWN_SPLIT} (before eval sets): not comparable across versions")
    if y["evalset_accuracy"]:
        lines.append(f"{indent}eval sets: " + ", ".join(f"{k} {a:.3f}" for k, a in y["evalset_accuracy"].items()))
    split = y["split"]
    if split and split["accuracy"] is not None:
        champ = f" vs {split['champion_accuracy']:.3f}" if split["champion_accuracy"] is not None else ""
        rows = split["excluded_incumbent_rows"]
        lines.append(f"{indent}{SPLIT_WITHOUT_INCUMBENT}: accuracy {split['accuracy']:.3f}{champ}"
                     + (f" ({rows} incumbent-written rows excluded)" if rows is not None else ""))  # fmt: skip
    lines += [f"{indent}{slice_text(y['slice'])}"] if y["slice"] else []
    lines += [f"{indent}{judge_text(y['judge'])}"] if y["judge"] else []
    return lines


def slice_text(s: dict[str, Any]) -> str:
    """``failure slice pattern-… (12 prompts, references: corrections): fixed 0.750 vs champion 0.250``."""
    head = f"failure slice {s['pattern']} ({s['size'] if s['size'] is not None else '?'} prompts"
    if not s["has_reference"]:
        return head + "): no reference, so no fix rate"
    champ = f" vs champion {s['fixed_rate_champion']:.3f}" if s["fixed_rate_champion"] is not None else ""
    fixed = f"{s['fixed_rate']:.3f}" if s["fixed_rate"] is not None else "?"
    return head + f", references: {s['reference']}): fixed {fixed}{champ}"


def judge_text(j: dict[str, Any]) -> str:
    """``judge <model>: win rate 0.700, net win +0.400 CI [+0.200, +0.600], kappa 0.810 (120 calls, $0.0300)``."""
    parts = [f"win rate {j['win_rate']:.3f}" if j["win_rate"] is not None else "win rate ?"]
    if j["net_win"] is not None:
        ci = j["net_win_ci"]
        parts.append(f"net win {j['net_win']:+.3f}" + (f" CI [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else ""))
    parts.append(f"kappa {j['kappa']:.3f}" if j["kappa"] is not None else "kappa none (uncalibrated)")
    cost = [f"{j['calls']} calls"] if j["calls"] is not None else []
    cost += [f"${j['cost']:.4f}"] if j["cost"] is not None else []
    return f"judge {j['model'] or '?'}: {', '.join(parts)}" + (f" ({', '.join(cost)})" if cost else "")


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
