"""The ``ftops_curate`` steps: curate a task type's new logs and stage the result in the warehouse
(:func:`curate_window`), then version what was staged (:func:`publish_window`).

Both read their inputs from durable shared stores (the warehouse, the DVC remote) and return small JSON-able
dicts, so they run on workers that share no disk. Curating runs in parallel across task types; only publishing
is serialised (DVC holds a repository lock). Both are safe to retry (see :func:`curate_task_type`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.curation.curated import STAGED_PAIRS
from ftops.pipeline.common import dataset_registry

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy as sa

    from ftops.curation.embedding import Embedder


log = logging.getLogger(__name__)


def task_types_to_curate(engine: sa.Engine, cfg: FtopsConfig, chosen: Sequence[str] = ()) -> list[str]:
    """The task types a run curates: ``chosen``, else the config's, else every task type in the log.

    Every distinct task type of the log is listed, valid name or not: :func:`curate_window` quarantines the
    rows of an invalid one. Also creates (or upgrades) FT-Ops' tables once, before the per-task-type steps
    start together.

    Raises:
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    from ftops.warehouse.logread import list_task_types
    from ftops.warehouse.schema import ensure_state_tables

    ensure_state_tables(engine, cfg.interactions_table)
    return list(chosen) or list(cfg.task_types) or list_task_types(engine, cfg.interactions_table)


def curate_task_type(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_type: str,
    *,
    run_key: str,
    since: datetime | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    embedder: Embedder | None = None,
    teacher_client: Callable[[], Any] | None = None,
    judge_client: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Read one task type's new logs, curate them with the earlier runs' candidates, validate and version.

    :func:`curate_window` then :func:`publish_window`, as the DAG runs them. The run reads the window from
    ``since`` (default: the watermark, where the last completed run stopped) to the run's first attempt; a
    retry or re-run of the same run key reads the same window. Order of writes, each idempotent: quarantine
    (replaced per run key and task type) → staged result (replaced per run key and task type) → dataset
    version (same content ⇒ same version) → curated pool (replaced per row id) → the window marked done,
    which moves the watermark, and the staged result dropped (one transaction). A crash anywhere leaves the
    watermark where it was, so the next attempt reads the same rows again.

    Returns:
        ``status`` (``versioned``, ``unchanged``, ``insufficient``, ``no_new_rows``, ``invalid_task_type``,
        ``dry_run``) with the version, counts, window and content hash.

    Raises:
        LookupError: The log table or a required column is missing.
        ValidationFailedError: A Great Expectations suite failed (the message names it and the Data Docs).
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    curated = curate_window(engine, cfg, task_type, run_key=run_key, since=since, dry_run=dry_run, now=now,
                            embedder=embedder, teacher_client=teacher_client, judge_client=judge_client)  # fmt: skip
    if not curated["staged"]:
        return curated
    return publish_window(engine, cfg, task_type, run_key=run_key)


def curate_window(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_type: str,
    *,
    run_key: str,
    since: datetime | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    embedder: Embedder | None = None,
    teacher_client: Callable[[], Any] | None = None,
    judge_client: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Curate one task type's window of logs, validate it, and stage the result in the warehouse.

    Quarantines malformed rows (replacing what an earlier attempt of the run stored), curates, validates the
    raw batch and the dataset with Great Expectations, and stages the dataset's JSONL, its metadata and the
    batch's candidates for :func:`publish_window`. A task type that is not a valid name (see
    ``ftops.core.names``) has all its rows quarantined as ``invalid_task_type``, and nothing is embedded,
    validated or written to any file. A window with nothing to publish is marked done here.

    With ``teacher.enabled``, the window's failed and low-rated rows are first relabelled by the teacher
    (:func:`ftops.pipeline.relabel.relabel_window`, clients from ``teacher_client``/``judge_client``): the frame
    gains ``teacher_answer`` and the summary ``teacher`` (calls, cost, accepted, rejected, skipped). A teacher
    that is down means no relabel, said in the log and in ``teacher.skipped_reason``, never a failed run.

    Returns:
        The summary: ``staged`` (True when :func:`publish_window` has work), ``status`` (``staged``: a
        dataset version is due; ``insufficient``: candidates only, fewer than ``min_examples``;
        ``no_new_rows``, ``invalid_task_type``, ``dry_run``: nothing to publish), counts and window.

    Raises:
        LookupError: The log table or a required column is missing.
        ValidationFailedError: A Great Expectations suite failed (the message names it and the Data Docs).
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    from ftops.core.config import ftops_home
    from ftops.core.names import TASK_TYPE_PATTERN, is_task_type
    from ftops.curation.curate import Curated, curate_frame, quarantine_all, summarise_accounting
    from ftops.curation.embedding import EmbeddingCache, SentenceEmbedder
    from ftops.curation.validation import require, validate_curated, validate_raw
    from ftops.datasets.versions import to_jsonl
    from ftops.pipeline.relabel import relabel_window
    from ftops.warehouse.logread import read_log_window
    from ftops.warehouse.schema import ensure_state_tables
    from ftops.warehouse.state import (
        curation_window,
        finish_curation_run,
        read_pool,
        stage_curation,
        write_quarantine,
    )

    started = time.perf_counter()
    table = cfg.interactions_table
    ensure_state_tables(engine, table)
    now = now or datetime.now(UTC)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a trigger form's time without an offset means UTC
    window_since, until = curation_window(engine, run_key, task_type, now=now, since=since, table=table)
    # stamped later than this attempt (beyond clock skew): quarantined, not left for a window that never comes
    future_after = max(now, until) + timedelta(minutes=cfg.curation.future_tolerance_minutes)
    frame, erased = read_log_window(engine, task_type, table=table, since=window_since, until=until,
                                    future_after=future_after)  # fmt: skip
    window = {"since": window_since.isoformat() if window_since else None, "until": until.isoformat()}
    read_s = time.perf_counter() - started
    log.info("Read %d %r rows from %s to %s, %d erased rows left out (%.1f s)", len(frame), task_type,
             window["since"] or "the start", window["until"], erased, read_s)  # fmt: skip
    # an erased row (ftops erase) is never read again, but still accounted for: rows_read = the window's rows
    erased_rows = Counter({"filtered:erased": erased} if erased else {})
    base: dict[str, Any] = {"task_type": task_type, "rows_read": len(frame) + erased, "window": window}

    def done(status: str, **extra: Any) -> dict[str, Any]:
        summary = {**base, **extra, "status": status, "dataset_version": None, "staged": False}
        if not dry_run:
            finish_curation_run(engine, run_key, task_type, dataset_version=None, summary=summary, table=table)
        log.info("%r: %s in %.1f s", task_type, status, time.perf_counter() - started)
        return summary

    def quarantine(curated: Curated) -> None:
        if not curated.balanced():
            raise RuntimeError(f"accounting does not add up: {dict(curated.accounting)} vs {curated.rows_read} read")
        if not dry_run:
            write_quarantine(engine, run_key, curated.quarantined, table, task_type=task_type)

    if not is_task_type(task_type):
        log.warning("%r is not a valid task type (pattern %s): its %d rows are quarantined as invalid_task_type "
                    "and nothing is curated", task_type, TASK_TYPE_PATTERN, len(frame))  # fmt: skip
        invalid = quarantine_all(frame, "invalid_task_type")
        quarantine(invalid)
        accounting = summarise_accounting(invalid.accounting + erased_rows)
        return done("invalid_task_type", accounting=accounting, accepted=0)
    if frame.empty:
        return done("no_new_rows", **({"accounting": summarise_accounting(erased_rows)} if erased else {}))
    _, _, cache_path = cfg.storage.resolved()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    docs_dir = ftops_home() / "data_docs"
    embedder = embedder or SentenceEmbedder(cfg.curation.embedding_model, batch_size=cfg.curation.embedding_batch_size)
    clock = time.perf_counter()
    published = published_examples(cfg, task_type)
    history_s = time.perf_counter() - clock
    clock = time.perf_counter()
    teacher = relabel_window(engine, cfg, task_type, frame, embedder=embedder, cache=EmbeddingCache(cache_path),
                             teacher_client=teacher_client, judge_client=judge_client, now=now, dry_run=dry_run)
    if teacher is not None:
        base["teacher"] = teacher
        log.info("%s: teacher relabelled %d of %d candidates (%d calls, cost %.4f) in %.1f s%s", task_type,
                 teacher["accepted"], teacher["candidates"], teacher["calls"], teacher["cost"],
                 time.perf_counter() - clock, f"; {teacher['skipped_reason']}" if teacher["skipped_reason"] else "")
    relabel_s = time.perf_counter() - clock
    curated = curate_frame(frame, cfg.curation, embedder, EmbeddingCache(cache_path),
                           earlier=read_pool(engine, task_type, table), future_after=future_after,
                           published=published, evalset=evalset_prompts(cfg, task_type),
                           trusted=trusted_teachers(frame, task_type))  # fmt: skip
    quarantine(curated)
    timings = {"read": round(read_s, 3), "read_history": round(history_s, 3), "relabel": round(relabel_s, 3),
               **curated.timings}
    clock = time.perf_counter()
    raw_report = validate_raw(frame, curated.reasons, task_type, cfg.curation, docs_dir)
    timings["validate_raw"] = round(time.perf_counter() - clock, 3)
    require(raw_report)
    accounting = summarise_accounting(curated.accounting + erased_rows)
    base |= {
        "accounting": accounting,
        "accepted": accounting.get("accepted", 0),
        "scrubbed": dict(sorted(curated.scrubbed.items())),
        "capped": {"users": len(curated.capped_users), "rows": sum(curated.capped_users.values())},
        "burst_users": curated.burst_users,
        "embedded_new": curated.embedded_new,
        "pool_size": curated.pool_size,
        "from_earlier_runs": curated.from_earlier_runs,
        "accepted_sources": dict(sorted(curated.accepted_sources.items())),  # this batch's accepted, per target source
        "target_rejections": dict(sorted(curated.target_rejections.items())),
        "preference_pairs": len(curated.preference),
        "train_rows": len(curated.train),
        "test_rows": len(curated.test),
        "diversity_score": round(curated.diversity_score, 4),
        "max_cross_split_similarity": round(curated.max_cross_split_similarity, 4),
        "max_user_share": round(curated.max_user_share, 4),
        "selection_index": curated.selection_index,
        "ann_recall": None if curated.ann_recall is None else round(curated.ann_recall, 4),
        "leakage_guard": curated.leakage,
        "evalset_excluded": curated.evalset_excluded,  # training examples that ask an eval-set question
        "timings_s": timings,
    }

    def stage(status: str, **dataset: Any) -> dict[str, Any]:
        summary = {**base, "status": status, "dataset_version": None, "staged": True}
        stage_curation(engine, run_key, task_type, summary=summary, candidates=curated.candidates, table=table,
                       **dataset)  # fmt: skip
        log.info("%s: %s (staged for publishing) in %.1f s", task_type, status, time.perf_counter() - started)
        return summary

    size = len(curated.train) + len(curated.test)
    if size < cfg.curation.min_examples:
        log.warning("%s: %d examples, fewer than min_examples=%d: no version yet; the candidates are kept for "
                    "the next run", task_type, size, cfg.curation.min_examples)  # fmt: skip
        return done("dry_run") if dry_run else stage("insufficient")
    clock = time.perf_counter()
    curated_report = validate_curated(curated.train, curated.test, cfg.curation, task_type,
                                      max_cross_split_similarity=curated.max_cross_split_similarity,
                                      docs_dir=docs_dir)  # fmt: skip
    timings["validate_curated"] = round(time.perf_counter() - clock, 3)
    require(curated_report)
    if dry_run:
        return done("dry_run")
    metadata = {
        **base,
        "run_key": run_key,
        "lineage": curated.lineage,  # the log row ids behind each split's examples, in order
        "served_by": curated.served_by,  # who wrote each example's reference (the gate leaves out the incumbent's)
        "sources": curated.sources,  # where each example's target came from: served | correction | teacher
        "source_counts": curated.source_counts(),
        STAGED_PAIRS: curated.preference,  # staged with the metadata; published as the version's preference pairs
        "validation": {"raw": raw_report.as_dict(), "curated": curated_report.as_dict()},
        "config": cfg.curation.model_dump(mode="json"),
    }
    return stage("staged", train_jsonl=to_jsonl(curated.train), test_jsonl=to_jsonl(curated.test), metadata=metadata)


def trusted_teachers(frame: pd.DataFrame, task_type: str) -> frozenset[str]:
    """The model versions of ``task_type`` marked as trusted teachers (``ftops trust-teacher``), whose unrated
    answers are targets. The registry is asked only when the batch has an unrated row naming a model version; a
    registry that does not answer fails the run (retried), so those rows are not filtered as unrated by mistake."""
    from ftops.registry.upstream import trusted_versions

    if "user_feedback" not in frame or "model_version" not in frame:
        return frozenset()
    if not (frame["user_feedback"].isna() & frame["model_version"].notna()).any():
        return frozenset()
    trusted = trusted_versions(task_type)
    if trusted:
        log.info("%s: unrated answers of %s are targets (trusted teachers)", task_type, ", ".join(sorted(trusted)))
    return trusted


def evalset_prompts(cfg: FtopsConfig, task_type: str) -> list[str]:
    """The prompts of the task type's latest eval set (every version holds the rows of the one before), which
    curation keeps out of training splits."""
    from ftops.datasets.evalsets import EvalSets

    evalsets = EvalSets(dataset_registry(cfg))
    latest = evalsets.latest(task_type)
    return [row["prompt"] for row in evalsets.read(latest)] if latest else []


def published_examples(cfg: FtopsConfig, task_type: str) -> list[tuple[str, str]]:
    """(prompt, split) of every example of every published version of a task type: the leakage guard's history.

    A version's examples are read from the dataset registry (through DVC, one read per split) once per worker,
    then from ``FTOPS_HOME/cache/published/<task_type>/<content hash>.json`` (a version's content never changes
    under its hash; the worker's DVC cache holds the same text); the file of a version no longer listed (its
    tag deleted on the remote) is deleted. The prompts' embeddings then come from the embedding cache, as
    each was embedded when it was curated.
    """
    from ftops.core.config import ftops_home
    from ftops.curation.curate import examples_of
    registry = dataset_registry(cfg)
    folder = ftops_home() / "cache" / "published" / task_type
    found: dict[tuple[str, str], None] = {}
    read, versions = 0, registry.versions(task_type)
    for version in versions:
        path = folder / f"{version.content_hash}.json"
        try:
            pairs = [(str(p), str(s)) for p, s in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):  # not cached yet, or a torn file: read the version again
            pairs = [(prompt, split) for split in ("train", "test")
                     for prompt, _ in examples_of(registry.read(version, split))]  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(pairs, ensure_ascii=False))
            partial.replace(path)  # whole or absent
            read += 1
        found.update(dict.fromkeys(pairs))
    listed = {f"{v.content_hash}.json" for v in versions}
    for stale in folder.glob("*.json"):
        if stale.name not in listed:  # a version deleted on the remote (a purge): its prompts go here too
            stale.unlink(missing_ok=True)
    log.info("%s: leakage history of %d examples, %d version(s) read through DVC, the rest cached",
             task_type, len(found), read)  # fmt: skip
    return list(found)


def publish_window(engine: sa.Engine, cfg: FtopsConfig, task_type: str, *, run_key: str) -> dict[str, Any]:
    """Publish what :func:`curate_window` staged for a run, then mark its window done.

    Versions the staged dataset (same content ⇒ same version), adds the batch's candidates to the curated
    pool, and marks the window done (the watermark moves) while dropping the staged result. Retry-safe: a
    run already published returns the summary it recorded.

    Returns:
        The summary with ``status`` ``versioned``, ``unchanged`` or ``insufficient``, the version and the
        content hash.

    Raises:
        InvalidNameError: ``task_type`` is not a valid task type.
        LookupError: Nothing is staged for the run and it is not done (curate it first).
        RuntimeError: The DVC push or git failed.
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    from ftops.core.names import check_task_type
    from ftops.warehouse.locks import versioning_lock

    check_task_type(task_type)
    with versioning_lock(engine, what=f"publishing {task_type}"):  # ftops erase outside Airflow takes it too
        return _publish_window(engine, cfg, task_type, run_key=run_key)


def _publish_window(engine: sa.Engine, cfg: FtopsConfig, task_type: str, *, run_key: str) -> dict[str, Any]:
    from ftops.core.names import contained_path
    from ftops.pipeline.erase_copies import drop_erased
    from ftops.warehouse.state import finish_curation_run, finished_run, read_staged, upsert_pool

    table = cfg.interactions_table
    staged = read_staged(engine, run_key, task_type, table)
    if staged is None:
        recorded = finished_run(engine, run_key, task_type, table)
        if recorded is None:
            raise LookupError(f"nothing is staged for {task_type!r} in run {run_key!r}: curate it first")
        log.info("%s: run %s is already published (%s)", task_type, run_key, recorded["status"])
        return recorded
    staged = drop_erased(engine, table, staged)  # rows erased since they were curated are never published
    summary: dict[str, Any] = staged["summary"]
    timings = summary.setdefault("timings_s", {})
    version = None
    if staged["train_jsonl"] is not None:
        registry = dataset_registry(cfg)
        contained_path(registry.root, task_type)  # the version's folder stays inside the registry
        train, test = (_rows(staged[split]) for split in ("train_jsonl", "test_jsonl"))
        clock = time.perf_counter()
        metadata = dict(staged["metadata"])
        pairs = metadata.pop(STAGED_PAIRS, None) or []
        version = registry.publish(task_type, train, test, metadata, preference=pairs)
        timings["version"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    upsert_pool(engine, [{**c, "run_key": run_key} for c in staged["candidates"]], table)
    timings["pool"] = round(time.perf_counter() - clock, 3)
    if version is None:
        result = {**summary, "status": "insufficient", "staged": False}
    else:
        result = {**summary, "status": "versioned" if version.created else "unchanged", "staged": False,
                  "dataset_version": version.tag, "content_hash": version.content_hash}  # fmt: skip
    finish_curation_run(engine, run_key, task_type, dataset_version=result["dataset_version"], summary=result,
                        table=table)  # fmt: skip
    log.info("%s: %s; time per phase (s): %s", task_type, result["status"],
             ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))  # fmt: skip
    return result


def summarise_results(*steps: Any) -> dict[str, str]:
    """Task type -> dataset version, else status, from the steps' results; a later step's result wins.

    Each step is a list of results, one result or None: an orchestrator may hand over the results of a
    step mapped inside a group that way when it has one or none (Airflow 3 does).
    """
    final: dict[str, dict[str, Any]] = {}
    for results in steps:
        for result in results if isinstance(results, list) else [] if results is None else [results]:
            final[result["task_type"]] = result
    return {t: r.get("dataset_version") or r["status"] for t, r in sorted(final.items())}


def _rows(jsonl: str) -> list[dict[str, Any]]:
    # split on "\n" only: JSON escapes it inside strings, but not U+2028 and the other breaks splitlines() knows
    return [json.loads(line) for line in jsonl.split("\n") if line.strip()]
