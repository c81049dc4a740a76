"""The ``ftops_curate`` step: read a task type's new logs, curate, validate and version them.

Reads its inputs from durable shared stores and returns a small JSON-able dict, so the step runs on
workers that share no disk, and is safe to retry (see :func:`curate_task_type`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.pipeline.common import dataset_registry

if TYPE_CHECKING:

    import sqlalchemy as sa

    from ftops.curation.embedding import Embedder


log = logging.getLogger(__name__)


# -- curation -------------------------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """Read one task type's new logs, curate them with the earlier runs' candidates, validate and version.

    The run reads the window from ``since`` (default: the watermark, where the last completed run stopped)
    to the run's first attempt; a retry or re-run of the same run key reads the same window. Order of
    writes, each idempotent: quarantine (replaced per run key) → dataset version (same content ⇒ same
    version) → curated pool (replaced per row id) → the window marked done, which moves the watermark.
    A crash anywhere leaves the watermark where it was, so the next attempt reads the same rows again.

    Returns:
        ``status`` (``versioned``, ``unchanged``, ``no_new_rows``, ``insufficient``, ``dry_run``) with the
        version, counts, window and content hash.

    Raises:
        LookupError: The log table or a required column is missing.
        ValidationFailedError: A Great Expectations suite failed (the message names it and the Data Docs).
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    from ftops.core.config import ftops_home
    from ftops.curation.curate import curate_frame, summarise_accounting
    from ftops.curation.embedding import EmbeddingCache, SentenceEmbedder
    from ftops.curation.validation import require, validate_curated, validate_raw
    from ftops.warehouse.schema import ensure_state_tables, read_interactions
    from ftops.warehouse.state import curation_window, finish_curation_run, read_pool, upsert_pool, write_quarantine

    started = time.perf_counter()
    table = cfg.interactions_table
    ensure_state_tables(engine, table)
    now = now or datetime.now(UTC)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a trigger form's time without an offset means UTC
    window_since, until = curation_window(engine, run_key, task_type, now=now, since=since, table=table)
    # stamped later than this attempt (beyond clock skew): quarantined, not left for a window that never comes
    future_after = max(now, until) + timedelta(minutes=cfg.curation.future_tolerance_minutes)
    frame = read_interactions(engine, task_type, table=table, since=window_since, until=until,
                              future_after=future_after)  # fmt: skip
    window = {"since": window_since.isoformat() if window_since else None, "until": until.isoformat()}
    read_s = time.perf_counter() - started
    log.info("Read %d %s rows from %s to %s (%.1f s)", len(frame), task_type, window["since"] or "the start",
             window["until"], read_s)  # fmt: skip
    base: dict[str, Any] = {"task_type": task_type, "rows_read": len(frame), "window": window}

    def finish(status: str, version: str | None = None, **extra: Any) -> dict[str, Any]:
        summary = {**base, **extra, "status": status, "dataset_version": version}
        if not dry_run:
            finish_curation_run(engine, run_key, task_type, dataset_version=version, summary=summary, table=table)
        log.info("%s: %s in %.1f s", task_type, status, time.perf_counter() - started)
        return summary

    if frame.empty:
        return finish("no_new_rows")
    _, _, cache_path = cfg.storage.resolved()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    docs_dir = ftops_home() / "data_docs"
    embedder = embedder or SentenceEmbedder(cfg.curation.embedding_model, batch_size=cfg.curation.embedding_batch_size)
    curated = curate_frame(frame, cfg.curation, embedder, EmbeddingCache(cache_path),
                           earlier=read_pool(engine, task_type, table), future_after=future_after)  # fmt: skip
    if not curated.balanced():
        raise RuntimeError(f"accounting does not add up: {dict(curated.accounting)} vs {curated.rows_read} read")
    if not dry_run:
        write_quarantine(engine, run_key, curated.quarantined, table)
    timings = {"read": round(read_s, 3), **curated.timings}
    clock = time.perf_counter()
    raw_report = validate_raw(frame, curated.reasons, task_type, cfg.curation, docs_dir)
    timings["validate_raw"] = round(time.perf_counter() - clock, 3)
    require(raw_report)
    accounting = summarise_accounting(curated.accounting)
    base |= {
        "accounting": accounting,
        "accepted": accounting.get("accepted", 0),
        "scrubbed": dict(sorted(curated.scrubbed.items())),
        "capped": {"users": len(curated.capped_users), "rows": sum(curated.capped_users.values())},
        "burst_users": curated.burst_users,
        "embedded_new": curated.embedded_new,
        "pool_size": curated.pool_size,
        "from_earlier_runs": curated.from_earlier_runs,
        "train_rows": len(curated.train),
        "test_rows": len(curated.test),
        "diversity_score": round(curated.diversity_score, 4),
        "max_cross_split_similarity": round(curated.max_cross_split_similarity, 4),
        "max_user_share": round(curated.max_user_share, 4),
        "timings_s": timings,
    }
    size = len(curated.train) + len(curated.test)
    if size < cfg.curation.min_examples:
        log.warning("%s: %d examples, fewer than min_examples=%d: no version yet; the candidates are kept for "
                    "the next run", task_type, size, cfg.curation.min_examples)  # fmt: skip
        if not dry_run:
            upsert_pool(engine, [{**c, "run_key": run_key} for c in curated.candidates], table)
        return finish("dry_run" if dry_run else "insufficient")
    clock = time.perf_counter()
    curated_report = validate_curated(curated.train, curated.test, cfg.curation, task_type,
                                      max_cross_split_similarity=curated.max_cross_split_similarity,
                                      docs_dir=docs_dir)  # fmt: skip
    timings["validate_curated"] = round(time.perf_counter() - clock, 3)
    require(curated_report)
    if dry_run:
        return finish("dry_run")
    metadata = {
        **base,
        "run_key": run_key,
        "validation": {"raw": raw_report.as_dict(), "curated": curated_report.as_dict()},
        "config": cfg.curation.model_dump(mode="json"),
    }
    clock = time.perf_counter()
    version = dataset_registry(cfg).publish(task_type, curated.train, curated.test, metadata)
    timings["version"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    upsert_pool(engine, [{**c, "run_key": run_key} for c in curated.candidates], table)
    timings["pool"] = round(time.perf_counter() - clock, 3)
    log.info("%s: time per phase (s): %s", task_type, ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    return finish("versioned" if version.created else "unchanged", version.tag, content_hash=version.content_hash)
