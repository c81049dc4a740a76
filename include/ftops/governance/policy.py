"""The governor's rules: whether to train a task type now, by which policy, and what stops it.

Policies say "train" from evidence; guards say "not now". Each is a plain function of its inputs that
returns a :class:`Check` with a sentence for a person and the inputs it used, so every decision, train or
not, can be recorded in full and explained later.

Policies, in order of precedence:

- ``force``: a person asked, with a reason.
- ``erasure``: a model in service was trained on data that has since been erased, and a successor
  dataset version without it is waiting.
- ``error_pattern``: a cluster of at least ``error_pattern_min`` similar failures since the last training,
  and the newest dataset version has something the champion's lacks.
- ``plateau``: the champion's live task success has not improved over ``plateau_days``, and new data came.
- ``new_data``: at least ``min_new_examples`` examples in the newest version that the champion's dataset
  version lacks and whose target is not the champion's own served answer (examples are counted, not version
  sizes; corrections, teacher answers and other versions' answers count).

The data policies (all but ``force``) only fire for a dataset version that no model was trained on yet.

Guards: a fine-tune of the dataset still running, the retry limit after failed fine-tunes, a canary in
progress, the per-task-type cooldown (not for erasure), and the daily API budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ftops.core.config import GovernorConfig


@dataclass(frozen=True)
class Check:
    """One policy's or guard's verdict: ``fired`` means "train" for a policy and "stop" for a guard."""

    name: str
    fired: bool
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    task_type: str
    train: bool
    reason: str
    dataset_version: str | None = None
    policy: str | None = None  # the policy that fired (also when a guard stopped it)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- policies -------------------------------------------------------------------------------------------------
def force_policy(force: bool, reason: str | None) -> Check:
    if not force:
        return Check("force", False, "nobody asked")
    return Check("force", True, f"manual request: {reason}", {"requested_reason": reason})


def erasure_policy(pending: dict[str, str], *, untrained: bool, latest: str) -> Check:
    """``pending``: model versions in service (``v3 (champion)``) -> the erasure request tagged on them."""
    inputs = {"erasure_pending": pending}
    if not pending:
        return Check("erasure", False, "no model in service holds erased data", inputs)
    held = ", ".join(f"{v} ({r})" for v, r in sorted(pending.items()))
    if not untrained:
        return Check("erasure", False, f"{held} hold erased data, but {latest} was already trained on", inputs)
    return Check("erasure", True, f"retrain without erased data: {held} were trained on it; {latest} is the "
                 "dataset without it", inputs)  # fmt: skip


def new_data_policy(new_examples: int, reference: str | None, *, untrained: bool, latest: str,
                    cfg: GovernorConfig, upstream: str | None = None) -> Check:  # fmt: skip
    """``new_examples``: examples of ``latest`` that ``reference`` (the champion's dataset version) lacks;
    ``upstream``: the champion's model name when it is an upstream model (trained on no dataset of ours)."""
    inputs = {"new_examples": new_examples, "reference": reference, "min_new_examples": cfg.min_new_examples}
    if reference:
        found = f"{new_examples} examples that {reference} lacks"
    elif upstream:
        found = f"{new_examples} examples (the champion is upstream model {upstream}: every one is new to a local model)"
    else:
        found = f"{new_examples} examples (no champion yet)"
    if not untrained:
        return Check("new_data", False, f"{latest} was already trained on", inputs)
    if new_examples < cfg.min_new_examples:
        return Check("new_data", False, f"{latest} has {found}, fewer than {cfg.min_new_examples}", inputs)
    return Check("new_data", True, f"{latest} has {found} (≥ {cfg.min_new_examples})", inputs)


def error_pattern_policy(failures: int, patterns: list[dict[str, Any]], since: datetime | None, *,
                         new_examples: int, untrained: bool, latest: str, cfg: GovernorConfig) -> Check:  # fmt: skip
    """``patterns``: clusters of similar failures (``cluster`` id, ``size``, ``mean_similarity``, scrubbed
    ``examples``).

    The reason is built from counts and cluster ids only: it travels into run conf, MLflow tags, the UI and
    assistants' answers, so it never quotes a prompt; the examples stay in the details, which every reader
    outside the warehouse gets with them withheld.
    """
    window = f"since {since:%Y-%m-%d %H:%M} UTC" if since else "so far"
    inputs = {"failures": failures, "since": since, "patterns": patterns, "error_pattern_min": cfg.error_pattern_min,
              "similarity": cfg.error_pattern_similarity}  # fmt: skip
    if not patterns:
        return Check("error_pattern", False, f"{failures} failures {window}, no {cfg.error_pattern_min} of them "
                     "alike", inputs)  # fmt: skip
    top = patterns[0]
    found = (f"{top['size']} similar failures {window} (cluster {top.get('cluster', '?')}, mean similarity "
             f"{float(top.get('mean_similarity', 0)):.2f}; {len(patterns)} pattern(s))")
    if not untrained or new_examples < 1:
        return Check("error_pattern", False, f"{found}, but {latest} brings nothing new to learn from: curate "
                     "more data for it", inputs)  # fmt: skip
    return Check("error_pattern", True, f"recurring error pattern: {found}; {latest} brings {new_examples} new "
                 "examples", inputs)  # fmt: skip


def plateau_policy(recent: dict[str, Any] | None, earlier: dict[str, Any] | None, *, new_examples: int,
                   untrained: bool, latest: str, cfg: GovernorConfig) -> Check:  # fmt: skip
    """``recent``/``earlier``: the champion's live metrics over the last ``plateau_days`` and the period before."""
    inputs = {"recent": recent, "earlier": earlier, "plateau_days": cfg.plateau_days,
              "min_improvement": cfg.plateau_min_improvement}  # fmt: skip
    if recent is None or earlier is None:
        return Check("plateau", False, "no champion in service", inputs)
    short = [n for n, m in (("last", recent), ("previous", earlier)) if m["requests"] < cfg.plateau_min_requests]
    if short:
        return Check("plateau", False, f"the champion served fewer than {cfg.plateau_min_requests} calls in the "
                     f"{' and '.join(short)} {cfg.plateau_days} days: too little to tell", inputs)  # fmt: skip
    now, before = recent["task_success_rate"], earlier["task_success_rate"]
    change = f"live task success {before:.3f} → {now:.3f} over {cfg.plateau_days} days"
    if now >= before + cfg.plateau_min_improvement:
        return Check("plateau", False, f"still improving: {change}", inputs)
    if not untrained or new_examples < 1:
        return Check("plateau", False, f"plateau ({change}), but {latest} brings nothing new", inputs)
    return Check("plateau", True, f"plateau: {change}; {latest} brings {new_examples} new examples", inputs)


# -- guards ---------------------------------------------------------------------------------------------------
def in_flight_guard(pending_runs: list[str], latest: str | None) -> Check:
    if pending_runs:
        return Check("in_flight", True, f"a fine-tune of {latest} has not finished yet ({', '.join(pending_runs)})",
                     {"runs": pending_runs})  # fmt: skip
    return Check("in_flight", False, "no fine-tune of it is running", {"runs": []})


def attempts_guard(failed_runs: list[str], latest: str | None, cfg: GovernorConfig) -> Check:
    inputs = {"failed_runs": failed_runs, "max_failed_attempts": cfg.max_failed_attempts}
    if len(failed_runs) >= cfg.max_failed_attempts:
        return Check("attempts", True, f"gave up on {latest}: its fine-tune failed {len(failed_runs)} times "
                     f"({', '.join(failed_runs)}); fix the cause, then publish a new version or force", inputs)  # fmt: skip
    note = f"retry {len(failed_runs)} of {cfg.max_failed_attempts - 1}" if failed_runs else "no failed fine-tune"
    return Check("attempts", False, note, inputs)


def canary_guard(canary: str | None) -> Check:
    if canary:
        return Check("canary", True, f"canary {canary} is still being judged: train once it is promoted or "
                     "rolled back", {"canary": canary})  # fmt: skip
    return Check("canary", False, "no canary in progress", {"canary": None})


def cooldown_guard(last_training: datetime | None, now: datetime, cfg: GovernorConfig) -> Check:
    inputs = {"last_training": last_training, "cooldown_hours": cfg.cooldown_hours}
    if last_training is None:
        return Check("cooldown", False, "never trained", inputs)
    until = last_training + timedelta(hours=cfg.cooldown_hours)
    if now < until:
        return Check("cooldown", True, f"cooling down until {until:%Y-%m-%d %H:%M} UTC (last training decision "
                     f"{last_training:%Y-%m-%d %H:%M}, cooldown {cfg.cooldown_hours:g} h)", inputs)  # fmt: skip
    return Check("cooldown", False, f"last training decision {last_training:%Y-%m-%d %H:%M} UTC", inputs)


def budget_guard(spent_today: float, estimate: float | None, cfg: GovernorConfig) -> Check:
    """``estimate``: the API fine-tune's estimated cost, None for a local backend."""
    inputs = {"spent_today_usd": round(spent_today, 4), "estimated_usd": estimate,
              "daily_api_budget_usd": cfg.daily_api_budget_usd}  # fmt: skip
    if estimate is None:
        return Check("budget", False, "local training: no API cost", inputs)
    if spent_today + estimate > cfg.daily_api_budget_usd:
        return Check("budget", True, f"daily API budget: ${spent_today:.2f} spent today + ${estimate:.2f} for "
                     f"this fine-tune > ${cfg.daily_api_budget_usd:g}", inputs)  # fmt: skip
    return Check("budget", False, f"${spent_today:.2f} + ${estimate:.2f} within ${cfg.daily_api_budget_usd:g}",
                 inputs)  # fmt: skip


# -- the decision ----------------------------------------------------------------------------------------------
EXEMPT = {"erasure": {"cooldown"}}  # guards a policy is not held back by


def decide(task_type: str, latest: str | None, policies: list[Check], guards: list[Check]) -> Decision:
    """Train by the first policy that fired (in the order given) unless a guard that applies to it fired.

    Every policy and guard is kept in ``details`` with its inputs.
    """
    details = {"policies": {p.name: p.as_dict() for p in policies}, "guards": {g.name: g.as_dict() for g in guards}}
    if latest is None:
        return Decision(task_type, False, "no dataset version yet: run ftops_curate first", None, None, details)
    fired = next((p for p in policies if p.fired), None)
    if fired is None:
        reasons = "; ".join(f"{p.name}: {p.reason}" for p in policies)
        return Decision(task_type, False, f"no policy fired ({reasons})", latest, None, details)
    blocking = [g for g in guards if g.fired and g.name not in EXEMPT.get(fired.name, set())]
    if blocking:
        why = "; ".join(g.reason for g in blocking)
        return Decision(task_type, False, f"{fired.name} would train, but {why}", latest, fired.name, details)
    return Decision(task_type, True, fired.reason, latest, fired.name, details)
