"""FT-Ops' state in the SQL warehouse: curation windows and staging, the curated pool, the quarantine and
the governor's decisions.

Works on any SQLAlchemy engine (the embedded SQLite default, PostgreSQL, or whatever engine an Airflow
``common.sql`` hook hands over). The tables are created by :func:`ftops.warehouse.schema.ensure_state_tables`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ftops.warehouse.schema import as_utc, curation_tables, log_tables, training_runs_table

log = logging.getLogger(__name__)


# -- curation state: the window of each run (whose end is the watermark) and the curated pool ---------
def curation_window(
    engine: sa.Engine,
    run_key: str,
    task_type: str,
    *,
    now: datetime,
    since: datetime | None = None,
    table: str = "interactions",
) -> tuple[datetime | None, datetime]:
    """The ``[since, until)`` window a curation run reads, fixed at its first attempt.

    A retry or re-run of the same run key gets the same window. A new run starts at ``since`` when given
    (re-reading history on purpose), else at the watermark: the end of the last completed run's window.
    """
    _, _, runs, _ = curation_tables(table)
    key = sa.and_(runs.c.log_table == table, runs.c.run_key == run_key, runs.c.task_type == task_type)
    with engine.begin() as conn:
        row = conn.execute(sa.select(runs.c.since, runs.c.until).where(key)).first()
        if row is not None:
            return as_utc(row.since), as_utc(row.until)  # type: ignore[return-value]
        if since is None:
            since = watermark(engine, task_type, table, conn=conn)
        conn.execute(sa.insert(runs), [{"run_key": run_key, "task_type": task_type, "log_table": table,
                                        "since": since, "until": now, "status": "started"}])  # fmt: skip
    return as_utc(since), now


def watermark(
    engine: sa.Engine, task_type: str, table: str = "interactions", *, conn: sa.Connection | None = None
) -> datetime | None:
    """End of the newest completed curation window of a task type (None before the first run)."""
    _, _, runs, _ = curation_tables(table)
    query = sa.select(sa.func.max(runs.c.until)).where(
        runs.c.task_type == task_type, runs.c.log_table == table, runs.c.status == "done"
    )
    if conn is not None:
        return as_utc(conn.scalar(query))
    with engine.connect() as c:
        return as_utc(c.scalar(query))


def finish_curation_run(
    engine: sa.Engine,
    run_key: str,
    task_type: str,
    *,
    dataset_version: str | None,
    summary: Mapping[str, Any],
    table: str = "interactions",
) -> None:
    """Mark a run's window done (the watermark moves to its end) and drop what it staged, in one transaction."""
    _, _, runs, staged = curation_tables(table)
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.log_table == table, runs.c.run_key == run_key, runs.c.task_type == task_type)
            .values(status="done", dataset_version=dataset_version, finished_at=datetime.now(UTC),
                    summary=json.dumps(summary, default=str, sort_keys=True))  # fmt: skip
        )
        conn.execute(sa.delete(staged).where(*_staged_key(staged, table, run_key, task_type)))


def finished_run(engine: sa.Engine, run_key: str, task_type: str, table: str = "interactions") -> dict[str, Any] | None:
    """The summary a completed run recorded, or None when the run is not done (or unknown)."""
    _, _, runs, _ = curation_tables(table)
    query = sa.select(runs.c.summary).where(runs.c.log_table == table, runs.c.run_key == run_key,
                                            runs.c.task_type == task_type, runs.c.status == "done")  # fmt: skip
    with engine.connect() as conn:
        summary = conn.scalar(query)
    return None if summary is None else dict(json.loads(summary))


# -- the hand-over from curating a window to publishing it --------------------------------------------------
def _staged_key(staged: sa.Table, table: str, run_key: str, task_type: str) -> list[sa.ColumnElement[bool]]:
    return [staged.c.log_table == table, staged.c.run_key == run_key, staged.c.task_type == task_type]


def stage_curation(
    engine: sa.Engine,
    run_key: str,
    task_type: str,
    *,
    summary: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]],
    train_jsonl: str | None = None,
    test_jsonl: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    table: str = "interactions",
) -> None:
    """Store what a run curated until it is published, replacing what an earlier attempt staged.

    Args:
        engine: The warehouse.
        run_key: The run (a DAG run id).
        task_type: The task type curated.
        summary: The curate step's result (JSON-able).
        candidates: This batch's survivors for the curated pool (``POOL_COLUMNS``; timestamps as datetimes).
        train_jsonl: The train split as JSON lines, or None when no version is due.
        test_jsonl: The test split as JSON lines, or None when no version is due.
        metadata: The version's metadata (with ``train_jsonl``).
        table: The log table.
    """
    _, _, _, staged = curation_tables(table)
    row = {
        "log_table": table, "run_key": run_key, "task_type": task_type,
        "summary": json.dumps(summary, default=str, sort_keys=True),
        "train_jsonl": train_jsonl, "test_jsonl": test_jsonl,
        "metadata_json": None if metadata is None else json.dumps(metadata, default=str, sort_keys=True),
        "candidates_json": json.dumps([{c: r.get(c) for c in POOL_COLUMNS if c != "run_key"} for r in candidates],
                                      default=_iso),
        "staged_at": datetime.now(UTC),
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.delete(staged).where(*_staged_key(staged, table, run_key, task_type)))
        conn.execute(sa.insert(staged), [row])


def read_staged(engine: sa.Engine, run_key: str, task_type: str, table: str = "interactions") -> dict[str, Any] | None:
    """What :func:`stage_curation` stored (``summary``, ``candidates``, ``train_jsonl``, ``test_jsonl``,
    ``metadata``), or None when nothing is staged (never staged, or the run is done)."""
    _, _, _, staged = curation_tables(table)
    with engine.connect() as conn:
        row = conn.execute(sa.select(staged).where(*_staged_key(staged, table, run_key, task_type))).first()
    if row is None:
        return None
    candidates = json.loads(row.candidates_json)
    for c in candidates:
        c["timestamp"] = None if c.get("timestamp") is None else datetime.fromisoformat(c["timestamp"])
    return {
        "summary": json.loads(row.summary),
        "candidates": candidates,
        "train_jsonl": row.train_jsonl,
        "test_jsonl": row.test_jsonl,
        "metadata": None if row.metadata_json is None else json.loads(row.metadata_json),
    }


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


POOL_COLUMNS = ("row_id", "task_type", "prompt", "response", "user_key", "user_feedback", "confidence",
                "latency_ms", "timestamp", "run_key", "model_version", "source", "rejected", "context")  # fmt: skip


def upsert_pool(engine: sa.Engine, rows: Sequence[Mapping[str, Any]], table: str = "interactions") -> int:
    """Store curated candidates (scrubbed text only), replacing earlier copies of the same row ids."""
    _, pool, _, _ = curation_tables(table)
    payload = [{c: r.get(c) for c in POOL_COLUMNS} for r in rows]
    with engine.begin() as conn:
        ids = [r["row_id"] for r in payload]
        for i in range(0, len(ids), 5000):
            conn.execute(sa.delete(pool).where(pool.c.row_id.in_(ids[i : i + 5000])))
        for i in range(0, len(payload), 5000):
            conn.execute(sa.insert(pool), payload[i : i + 5000])
    return len(payload)


def read_pool(engine: sa.Engine, task_type: str, table: str = "interactions") -> list[dict[str, Any]]:
    """Every curated candidate of a task type from earlier runs."""
    _, pool, _, _ = curation_tables(table)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(pool).where(pool.c.task_type == task_type).order_by(pool.c.row_id))
        return [{**r._mapping, "timestamp": as_utc(r.timestamp)} for r in rows]


def write_quarantine(
    engine: sa.Engine,
    run_key: str,
    rows: Sequence[Mapping[str, Any]],
    table: str = "interactions",
    *,
    task_type: str | None = None,
) -> int:
    """Store a run's quarantined rows (``row_id``, ``task_type``, ``reason``, ``row``), every copy of an id.

    Idempotent per run key and task type: what the run stored for the task type before (an earlier attempt)
    is replaced, never added to. Copies of one id under one task type are numbered (``copy_index``) in the
    order given; a run that reads the same rows again under another run key stores them under that key.

    Args:
        engine: The warehouse.
        run_key: The run.
        rows: The quarantined rows of one task type's batch.
        table: The log table.
        task_type: The task type whose earlier rows are replaced; default the task types of ``rows``
            (give it, so that a retry that quarantines nothing still clears an earlier attempt's rows).

    Returns:
        How many rows were stored.
    """
    _, _, q, _ = log_tables(table)
    now = datetime.now(UTC)
    copies: Counter[tuple[str, str]] = Counter()
    payload = []
    for r in rows:
        key = (task_type if task_type is not None else str(r.get("task_type") or ""), str(r["row_id"]))
        payload.append({"run_key": run_key, "task_type": key[0], "row_id": key[1], "copy_index": copies[key],
                        "reason": r["reason"], "row_json": json.dumps(r.get("row"), default=str),
                        "quarantined_at": now})  # fmt: skip
        copies[key] += 1
    task_types = {task_type} if task_type is not None else {r["task_type"] for r in payload}
    with engine.begin() as conn:
        conn.execute(sa.delete(q).where(q.c.run_key == run_key, q.c.task_type.in_(task_types)))
        for i in range(0, len(payload), 5000):
            conn.execute(sa.insert(q), payload[i : i + 5000])
    return len(payload)


def record_decision(engine: sa.Engine, decision: Mapping[str, Any]) -> None:
    """Store one decision (``ftops_decisions``); re-recording the same ``decision_key`` replaces it (retry-safe).

    ``decision`` holds the table's columns: ``decision_key``, ``decided_at``, ``task_type``, ``train``,
    ``reason``, and optionally ``dataset_version``, ``details`` (JSON-able), ``kind`` (default ``training``),
    ``policy`` and ``run_id``; other keys are ignored.
    """
    _, _, _, d = log_tables("interactions")
    row = {c: decision.get(c) for c in d.c.keys()}
    row["kind"] = row["kind"] or "training"
    row["details"] = json.dumps(row.get("details") or {}, default=str, sort_keys=True)
    with engine.begin() as conn:
        conn.execute(sa.delete(d).where(d.c.decision_key == row["decision_key"]))
        conn.execute(sa.insert(d), [row])


def read_decisions(
    engine: sa.Engine, task_type: str | None = None, *, kind: str | None = None, limit: int | None = None,
    decision_key: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Decisions (only ``decision_key``'s, if given), newest first, with ``details`` parsed and ``decided_at`` in UTC."""
    _, _, _, d = log_tables("interactions")
    query = sa.select(d).order_by(d.c.decided_at.desc(), d.c.decision_key)
    for column, value in (("task_type", task_type), ("kind", kind), ("decision_key", decision_key)):
        if value:
            query = query.where(d.c[column] == value)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for r in rows:
        r["details"] = json.loads(r["details"]) if r["details"] else {}
        r["decided_at"] = as_utc(r["decided_at"])
    return rows


def record_training_outcome(
    engine: sa.Engine,
    run_id: str,
    task_type: str,
    *,
    dataset_version: str | None,
    status: str,
    model_version: str | None = None,
) -> None:
    """Store how an ``ftops_finetune`` run ended (``succeeded`` or ``failed``); a repeat replaces it."""
    if status not in ("succeeded", "failed"):
        raise ValueError(f"status must be 'succeeded' or 'failed', not {status!r}")
    md, runs = training_runs_table()
    md.create_all(engine, checkfirst=True)  # a warehouse no governor has prepared (a fine-tune triggered by hand)
    row = {"run_id": run_id, "task_type": task_type, "dataset_version": dataset_version, "status": status,
           "model_version": model_version, "finished_at": datetime.now(UTC)}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.delete(runs).where(runs.c.run_id == run_id))
        conn.execute(sa.insert(runs), [row])


def training_outcomes(engine: sa.Engine, task_type: str) -> dict[str, dict[str, Any]]:
    """Run id -> recorded outcome (``status``, ``dataset_version``, ``model_version``, ``finished_at``)."""
    _, runs = training_runs_table()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs).where(runs.c.task_type == task_type)).all()
    return {r.run_id: {**r._mapping, "finished_at": as_utc(r.finished_at)} for r in rows}


def verdict_column(engine: sa.Engine, t: sa.Table) -> sa.ColumnElement[Any]:
    """The log's ``task_success``, or null for a log table no gateway has upgraded (``ensure_schema``)."""
    with engine.connect() as conn:
        present = any(c["name"] == "task_success" for c in sa.inspect(conn).get_columns(t.name))
    return t.c.task_success if present else sa.null().label("task_success")


def recent_failures(
    engine: sa.Engine,
    task_type: str,
    since: datetime | None,
    table: str = "interactions",
    *,
    max_rating: int = 2,
    limit: int = 2000,
    exclude: sa.ColumnElement[bool] | None = None,
) -> list[dict[str, Any]]:
    """The newest failed calls of a task type since ``since``: ``success`` or ``task_success`` false, or, without a
    verdict, rated ``max_rating`` or lower. Returns ``id``, ``prompt``, ``timestamp``, newest first, at most ``limit``.

    ``exclude`` is a further condition on the log table's rows to keep (e.g. "not erased").
    """
    _, t, _, _ = log_tables(table)
    verdict = verdict_column(engine, t)  # the client's verdict, where given, outweighs its rating
    failed = sa.or_(t.c.success.is_(False), verdict.is_(False), sa.and_(verdict.is_(None), t.c.user_feedback <= max_rating))
    where = [t.c.task_type == task_type, failed, t.c.prompt.is_not(None)]
    if since is not None:
        where.append(t.c.timestamp >= since)
    if exclude is not None:
        where.append(exclude)
    query = sa.select(t.c.id, t.c.prompt, t.c.timestamp).where(*where).order_by(t.c.timestamp.desc(), t.c.id)
    with engine.connect() as conn:
        return [{"id": r.id, "prompt": r.prompt, "timestamp": as_utc(r.timestamp)}
                for r in conn.execute(query.limit(limit))]  # fmt: skip


def live_metrics(
    engine: sa.Engine,
    task_type: str,
    model_version: str,
    since: datetime,
    table: str = "interactions",
    *,
    until: datetime | None = None,
    success_min_rating: int = 4,
) -> dict[str, Any]:
    """What users saw of one served model version in ``[since, until)``.

    Counts are aggregated in the warehouse (grouped by success, rating and latency), so a busy champion's
    window costs a few thousand groups, not a row per call.

    Args:
        engine: The warehouse.
        task_type: The task type.
        model_version: The served name, ``ftops-<task_type>/<version>``.
        since: Start of the window (inclusive).
        table: The log table.
        until: End of the window (exclusive); default open-ended.
        success_min_rating: Lowest rating at which a rated call counts as a task success.

    Returns:
        ``requests``; ``errors`` and ``error_rate`` (a call whose ``success`` is not true is an error);
        ``latency_p95_ms`` (linear interpolation, as :func:`~ftops.core.stats.percentile`; a missing latency
        counts as 0); ``rated`` (calls with a rating 1-5; other values count as unrated), ``rating_counts``
        (calls rated 1, 2, 3, 4, 5) and ``mean_rating`` (None without ratings); ``task_successes`` and
        ``task_success_rate``: calls that succeeded (the gateway's ``success``) and that the client judged a
        success (``task_success`` from feedback) or, without a verdict, were rated ``success_min_rating`` or
        higher or not rated, over every call (an unjudged successful call counts as a task success: most
        calls get no feedback, and leaving them out would judge a version by its few raters alone).
    """
    _, t, _, _ = log_tables(table)
    where = [t.c.task_type == task_type, t.c.model_version == model_version, t.c.timestamp >= since]
    if until is not None:
        where.append(t.c.timestamp < until)
    n = sa.func.count()
    columns = (t.c.success, verdict_column(engine, t), t.c.user_feedback, t.c.latency_ms)
    grouped = [c for c in columns if isinstance(c, sa.Column)]  # PostgreSQL refuses GROUP BY NULL
    query = sa.select(*columns, n).where(*where).group_by(*grouped)
    with engine.connect() as conn:
        groups = conn.execute(query).all()
    requests = errors = task_successes = 0
    rating_counts = [0] * 5
    latencies: Counter[float] = Counter()
    for success, verdict, rating, latency, count in groups:
        requests += count
        latencies[float(latency or 0)] += count
        rated = rating is not None and 1 <= rating <= 5
        if rated:
            rating_counts[int(rating) - 1] += count
        if not success:
            errors += count
        elif verdict if verdict is not None else (not rated or rating >= success_min_rating):
            task_successes += count
    rated_n = sum(rating_counts)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "latency_p95_ms": _counted_percentile(latencies, 0.95) if requests else 0.0,
        "rated": rated_n,
        "rating_counts": rating_counts,
        "mean_rating": sum(r * c for r, c in enumerate(rating_counts, 1)) / rated_n if rated_n else None,
        "task_successes": task_successes,
        "task_success_rate": task_successes / requests if requests else 0.0,
    }


def _counted_percentile(counts: Mapping[float, int], q: float) -> float:
    """:func:`~ftops.core.stats.percentile` of a sample given as ``value -> count``."""
    pos = (sum(counts.values()) - 1) * q
    lo_rank, hi_rank = math.floor(pos), math.ceil(pos)
    lo = hi = math.nan
    seen = 0
    for value in sorted(counts):
        seen += counts[value]  # ranks [seen before, seen) hold this value
        if math.isnan(lo) and seen > lo_rank:
            lo = value
        if seen > hi_rank:
            hi = value
            break
    return lo + (hi - lo) * (pos - lo_rank)
