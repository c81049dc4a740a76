"""The ``ftops_governor`` step: decide per task type whether to train, and record every decision.

For each task type it gathers the evidence the policies of :mod:`ftops.governance.policy` need (the newest
dataset version and the champion's, counted example by example, leaving out the champion's own served
answers; failures since the last training,
clustered with FAISS; the champion's live task success over two windows) and what the guards need (earlier
decisions and how their fine-tunes ended, the canary, the day's API spend), decides, and records the
decision with every policy's and guard's inputs in ``ftops_decisions``. A task type whose evidence cannot be
gathered gets a decision that records the error; the others go on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.core.names import check_task_type, key_digest
from ftops.pipeline.common import dataset_registry, served_model_version
from ftops.registry import models as registry
from ftops.registry.upstream import MODEL_TAG as UPSTREAM_MODEL_TAG
from ftops.registry.upstream import UPSTREAM

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ftops.curation.embedding import Embedder
    from ftops.datasets.versions import DatasetRegistry, DatasetVersion
    from ftops.governance.policy import Check, Decision


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Whether training may start now for a task type, and why (the guards' answer)."""

    allowed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


# -- governance -----------------------------------------------------------------------------------------
def govern(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_types: Sequence[str],
    *,
    run_key: str,
    force: bool = False,
    reason: str | None = None,
    now: datetime | None = None,
    embedder: Embedder | None = None,
) -> list[dict[str, Any]]:
    """Decide for each task type whether to train; record every decision in the warehouse.

    Retry-safe: decisions are keyed by run key and task type, and a decision to train names the
    ``ftops_finetune`` run it starts (:func:`finetune_run_id`), so a retry starts nothing twice.

    Args:
        engine: The warehouse.
        cfg: The config.
        task_types: Task types to decide for; empty: every task type with a dataset version or a model.
        run_key: The governor run (a DAG run id).
        force: A person asks for training (still subject to the guards).
        reason: Their reason; required with ``force``.
        now: The time of the decision (tests).
        embedder: Prompt embedder for the error-pattern policy (default: the curation's model).

    Returns:
        One decision per task type (``Decision`` fields, ``decision_key`` and, when training,
        ``finetune_run_id``).

    Raises:
        ValueError: ``force`` without a reason.
        LookupError: A task type asked for by name is unknown (no config entry, dataset or model).
        InvalidNameError: A task type is not a valid name.
    """
    from ftops.warehouse.schema import ensure_schema
    from ftops.warehouse.state import record_decision

    if force and not (reason or "").strip():
        raise ValueError("force needs a reason: say why training is asked for (it is recorded with the model)")
    now = now or datetime.now(UTC)
    ensure_schema(engine, cfg.interactions_table)
    datasets = dataset_registry(cfg)
    known = known_task_types(cfg, datasets)
    chosen = [check_task_type(t) for t in task_types] or known
    if task_types:
        unknown = [t for t in chosen if t not in known]
        if unknown:
            raise LookupError(f"unknown task type(s) {unknown}: no config entry, dataset version or model "
                              f"(known: {', '.join(known) or 'none'})")  # fmt: skip
    results = []
    for task_type in chosen:
        key = f"{run_key}/{task_type}"
        try:
            decision = decide_task_type(engine, cfg, datasets, task_type, run_key=run_key, force=force, reason=reason,
                                        now=now, embedder=embedder)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one task type's failure is recorded; the others go on
            log.exception("%s: the policies could not be evaluated", task_type)
            decision = _error_decision(task_type, exc)
        run_id = finetune_run_id(task_type, decision, run_key=run_key) if decision.train else None
        log.info("%s: %s (%s)", task_type, "TRAIN" if decision.train else "wait", decision.reason)
        record_decision(engine, {**decision.as_dict(), "decision_key": key, "decided_at": now, "kind": "training",
                                 "run_id": run_id})  # fmt: skip
        results.append({**decision.as_dict(), "decision_key": key, "finetune_run_id": run_id})
    return results


def known_task_types(cfg: FtopsConfig, datasets: DatasetRegistry) -> list[str]:
    """Task types in the config, with a dataset version, or with a registered model."""
    return sorted(set(cfg.task_types) | set(datasets.task_types()) | set(registry.registered_task_types()))


def _error_decision(task_type: str, exc: Exception) -> Decision:
    from ftops.governance.policy import Decision

    message = f"{type(exc).__name__}: {str(exc)[:300]}"
    return Decision(task_type, False, f"policy error, nothing decided: {message}", None, None, {"error": message})


def finetune_run_id(task_type: str, decision: Decision, *, run_key: str) -> str:
    """The ``ftops_finetune`` run id a decision to train starts: task type + dataset version + policy.

    Deterministic, so a retried governor task (or a second governor run deciding the same) finds the run it
    started instead of starting a second fine-tune of the same data. A forced decision is keyed by the
    governor run as well: a person asking again later is a new request. After failed fine-tunes of the
    version, the attempt is appended (``__retry1``). Only characters Airflow allows in run ids.
    """
    version = (decision.dataset_version or "latest").rsplit("/", 1)[-1]
    policy = f"force-{key_digest(run_key)[:12]}" if decision.policy == "force" else str(decision.policy)
    failed = len(decision.details.get("guards", {}).get("attempts", {}).get("inputs", {}).get("failed_runs", []))
    return f"governor__{task_type}__{version}__{policy}" + (f"__retry{failed}" if failed else "")


# -- one task type ------------------------------------------------------------------------------------------
def decide_task_type(
    engine: sa.Engine,
    cfg: FtopsConfig,
    datasets: DatasetRegistry,
    task_type: str,
    *,
    run_key: str,
    force: bool = False,
    reason: str | None = None,
    now: datetime,
    embedder: Embedder | None = None,
    evaluate_policies: bool = True,
) -> Decision:
    """Gather the evidence for one task type and decide (nothing is recorded here).

    ``evaluate_policies=False`` skips the data policies (only ``force`` and the guards count): what a check
    of the guards alone needs.
    """
    from ftops.governance import policy as p

    latest = datasets.latest(task_type)
    history = _History.read(engine, task_type, exclude_key=f"{run_key}/{task_type}")
    if latest is None:
        return p.decide(task_type, None, [], [])
    trained = registry.trained_dataset_versions(task_type)
    untrained = latest.tag not in trained
    champion = registry.alias_version(task_type, "champion")
    canary = registry.alias_version(task_type, "canary")
    reference = champion.tags.get("dataset_version") if champion else None
    # An upstream champion's answers are new to the local model (distilling them is the point); a trained
    # champion's own answers teach it nothing new
    tags = (champion.tags or {}) if champion else {}
    upstream = tags.get(UPSTREAM_MODEL_TAG) if tags.get("backend") == UPSTREAM else None
    own = served_model_version(task_type, str(champion.version)) if champion and not upstream else None
    new_examples = count_new_examples(datasets, latest, reference, champion=own)
    enabled = set(cfg.governor.policies) if evaluate_policies else set()
    gov = cfg.governor

    def policy(name: str, evaluate: Any) -> Check:
        if name not in enabled:
            return p.Check(name, False, "disabled (governor.policies)")
        try:
            return evaluate()  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - recorded; the other policies still decide
            log.exception("%s: policy %s failed", task_type, name)
            return p.Check(name, False, f"error: {type(exc).__name__}: {str(exc)[:300]}", {"error": str(exc)[:300]})

    since = history.last_training(task_type)
    policies = [
        p.force_policy(force, reason),
        policy("erasure", lambda: p.erasure_policy(_erasure_pending(champion, canary), untrained=untrained,
                                                   latest=latest.tag)),  # fmt: skip
        policy("error_pattern", lambda: p.error_pattern_policy(
            *_error_patterns(engine, cfg, task_type, since, embedder), since, new_examples=new_examples,
            untrained=untrained, latest=latest.tag, cfg=gov)),  # fmt: skip
        policy("plateau", lambda: p.plateau_policy(*_plateau_windows(engine, cfg, task_type, champion, now),
                                                   new_examples=new_examples, untrained=untrained, latest=latest.tag,
                                                   cfg=gov)),  # fmt: skip
        policy("new_data", lambda: p.new_data_policy(new_examples, reference, untrained=untrained, latest=latest.tag,
                                                     upstream=upstream,
                                                     cfg=gov)),  # fmt: skip
    ]
    pending, failed = history.attempts(task_type, latest.tag)
    estimate = _api_cost(cfg, datasets, latest) if any(c.fired for c in policies) else None
    guards = [
        p.in_flight_guard(pending, latest.tag),
        p.attempts_guard(failed, latest.tag, gov),
        p.canary_guard(f"v{canary.version}" if canary else None),
        p.cooldown_guard(since, now, gov),
        p.budget_guard(history.spent_today(now), estimate, gov),
    ]
    decision = p.decide(task_type, latest.tag, policies, guards)
    if estimate is not None:
        decision.details["estimated_usd"] = round(estimate, 4)
    return decision


def training_guards(engine: sa.Engine, cfg: FtopsConfig, task_type: str, *, now: datetime | None = None) -> Verdict:
    """Whether a person's request to train ``task_type`` would pass the governor's guards right now.

    The same guards the governor applies to a forced decision (a fine-tune of the newest dataset version
    still running, the retry limit, a canary in progress, the cooldown, the daily API budget).

    Raises:
        LookupError: The task type is unknown.
        InvalidNameError: It is not a valid name.
    """
    from ftops.warehouse.schema import ensure_schema

    check_task_type(task_type)
    ensure_schema(engine, cfg.interactions_table)
    datasets = dataset_registry(cfg)
    if task_type not in known_task_types(cfg, datasets):
        raise LookupError(f"unknown task type {task_type!r}: no config entry, dataset version or model")
    decision = decide_task_type(engine, cfg, datasets, task_type, run_key="guard-check", force=True,
                                reason="request", now=now or datetime.now(UTC), evaluate_policies=False)  # fmt: skip
    if decision.dataset_version is None:
        return Verdict(False, decision.reason, decision.details)
    if decision.train:
        return Verdict(True, f"no guard stops training {task_type} on {decision.dataset_version}", decision.details)
    return Verdict(False, decision.reason.removeprefix("force would train, but "), decision.details)


# -- evidence -----------------------------------------------------------------------------------------------
@dataclass
class _History:
    """Earlier training decisions (all task types) and how their fine-tunes ended (this task type)."""

    sent: list[dict[str, Any]]
    outcomes: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, engine: sa.Engine, task_type: str, *, exclude_key: str) -> _History:
        from ftops.warehouse.state import read_decisions, training_outcomes

        # this run's own decision (a retried task) is not history: it would hold the retry back
        sent = [d for d in read_decisions(engine, kind="training") if d["train"] and d["decision_key"] != exclude_key]
        return cls(sent, training_outcomes(engine, task_type))

    def last_training(self, task_type: str) -> datetime | None:
        times = [d["decided_at"] for d in self.sent if d["task_type"] == task_type]
        return max(times) if times else None

    def attempts(self, task_type: str, dataset_version: str) -> tuple[list[str], list[str]]:
        """Run ids of fine-tunes of the version that have not ended, and of those that failed."""
        runs = {d["run_id"] for d in self.sent if d["task_type"] == task_type and d["dataset_version"] == dataset_version
                and d["run_id"]}  # fmt: skip
        pending = sorted(r for r in runs if r not in self.outcomes)
        failed = sorted(r for r, o in self.outcomes.items()
                        if o["status"] == "failed" and o["dataset_version"] == dataset_version)  # fmt: skip
        return pending, failed

    def spent_today(self, now: datetime) -> float:
        day = now.astimezone(UTC).date()
        return sum(float(d["details"].get("estimated_usd") or 0) for d in self.sent if d["decided_at"].date() == day)


def count_new_examples(
    datasets: DatasetRegistry, latest: DatasetVersion, reference: str | None, *, champion: str | None = None
) -> int:
    """Examples (train and test) of ``latest`` that the ``reference`` version (a tag) lacks; all when None.

    An example whose reference is the champion's own served answer (its ``served_by`` in the version's metadata
    is ``champion``, the served name ``ftops-<task_type>/<version>``) is not counted: the champion already
    answers that way, so it teaches nothing new. Corrections, teacher answers (``served_by`` None) and answers
    other versions served count.
    """
    served_by = (datasets.read_metadata(latest).get("served_by") or {}) if champion else {}
    rows: set[str] = set()
    for split in ("train", "test"):
        examples = datasets.read(latest, split)
        by = served_by.get(split) if isinstance(served_by, dict) else None
        own = by if isinstance(by, list) and len(by) == len(examples) else [None] * len(examples)
        rows |= {_example_key(r) for r, writer in zip(examples, own, strict=True) if writer is None or writer != champion}
    if reference is None:
        return len(rows)
    if reference == latest.tag:
        return 0
    try:
        old = datasets.get(latest.task_type, reference)
    except LookupError:  # trained on a version this registry does not hold (moved or another registry)
        log.warning("%s: the champion's dataset %s is not in the registry: every example counts as new",
                    latest.task_type, reference)  # fmt: skip
        return len(rows)
    return len(rows - {_example_key(r) for split in ("train", "test") for r in datasets.read(old, split)})


def _example_key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _erasure_pending(*served: Any) -> dict[str, str]:
    out = {}
    for mv, alias in zip(served, ("champion", "canary"), strict=True):
        if mv is not None and mv.tags.get("ftops.erasure_pending"):
            out[f"v{mv.version} ({alias})"] = mv.tags["ftops.erasure_pending"]
    return out


def _error_patterns(
    engine: sa.Engine, cfg: FtopsConfig, task_type: str, since: datetime | None, embedder: Embedder | None
) -> tuple[int, list[dict[str, Any]]]:
    """(failures since ``since``, clusters of similar ones as recorded: size, similarity, scrubbed examples)."""
    from ftops.curation.scrub import scrub
    from ftops.governance.patterns import find_clusters
    from ftops.warehouse.state import recent_failures

    gov = cfg.governor
    failures = recent_failures(engine, task_type, since, cfg.interactions_table, limit=gov.error_pattern_max_failures,
                               exclude=_not_erased(cfg.interactions_table))  # fmt: skip
    if len(failures) < gov.error_pattern_min:
        return len(failures), []
    if embedder is None:
        from ftops.curation.embedding import SentenceEmbedder

        embedder = SentenceEmbedder(cfg.curation.embedding_model, batch_size=cfg.curation.embedding_batch_size)
    vectors = embedder.embed([f["prompt"] for f in failures])
    clusters = find_clusters(vectors, similarity=gov.error_pattern_similarity, min_size=gov.error_pattern_min)
    # the cluster id names the pattern without quoting it: a digest of its founding failure's row id
    patterns = [{"cluster": "pattern-" + key_digest(str(failures[c.members[0]]["id"]))[:8], "size": c.size,
                 "mean_similarity": c.mean_similarity,
                 "examples": [scrub(failures[i]["prompt"]).text[:200] for i in c.members[:3]],
                 "row_ids": [failures[i]["id"] for i in c.members[:50]]}
                for c in clusters[:3]]  # fmt: skip
    log.info("%s: %d failures since %s, %d patterns (largest %s)", task_type, len(failures), since or "the start",
             len(clusters), clusters[0].size if clusters else 0)  # fmt: skip
    return len(failures), patterns


def _not_erased(table: str) -> Any:
    """The log rows no erasure request marked (``ftops erase``)."""
    from ftops.warehouse.erasure import not_erased
    from ftops.warehouse.schema import log_tables

    return not_erased(log_tables(table)[1], table)


def _plateau_windows(
    engine: sa.Engine, cfg: FtopsConfig, task_type: str, champion: Any, now: datetime
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The champion's live metrics over the last ``plateau_days`` and the ``plateau_days`` before."""
    from ftops.warehouse.state import live_metrics

    if champion is None:
        return None, None
    served = served_model_version(task_type, str(champion.version))
    span = timedelta(days=cfg.governor.plateau_days)
    table, rating = cfg.interactions_table, cfg.canary.success_min_rating

    def window(start: datetime, end: datetime) -> dict[str, Any]:
        m = live_metrics(engine, task_type, served, start, table, until=end, success_min_rating=rating)
        return {"since": start, "until": end, "requests": m["requests"],
                "task_success_rate": round(m["task_success_rate"], 4)}  # fmt: skip

    return window(now - span, now), window(now - 2 * span, now - span)


def _api_cost(cfg: FtopsConfig, datasets: DatasetRegistry, latest: DatasetVersion) -> float | None:
    """The estimated cost of fine-tuning ``latest`` through the API backend; None for a local backend."""
    backend = cfg.training.backend
    if backend.kind != "openai":
        return None
    from ftops.training.openai_cost import estimate_cost

    return estimate_cost(datasets.read(latest, "train"), backend).usd
