"""The copies of a user's data outside the warehouse's tables and the dataset versions, which ``ftops erase``
reaches after marking the user's log rows (:mod:`ftops.pipeline.erase`).

Each function is idempotent and finds its work in the store it cleans, so a re-run after a crash finishes the
job and a second run changes nothing:

* :func:`drop_staged`: what a curation run staged but has not published yet loses the erased rows;
* :func:`scan_spool`: rows still in the gateway's spool are marked erased (so they are left out when they
  arrive), dropped from the spool files when no gateway holds the spool, and dropped from its rejected file;
* :func:`redact_runs`: evaluation outputs in MLflow of runs on affected dataset versions are rewritten without
  the user's examples (the run is tagged ``ftops.erasure_redacted``);
* :func:`delete_api_files`: training files FT-Ops uploaded to the OpenAI-compatible API for those runs;
* :func:`remove_data_docs`: Data Docs pages and stored validation results that quote the user's text;
* :func:`redact_decisions`: decisions recorded before reasons stopped quoting prompts lose the quotes.
"""

from __future__ import annotations

import fcntl
import html
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.datasets.versions import SPLITS

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)
REDACTED_TAG = "ftops.erasure_redacted"  # on MLflow runs whose evaluation outputs lost an erased user's rows
FILES_DELETED_TAG = "ftops.api_files_deleted"  # on MLflow runs whose uploaded API training files were deleted
OUTPUTS = "evaluation/outputs.jsonl"
REDACTED = "[erased]"
PER_ROW = ("served_by", "sources")  # a version's metadata lists aligned with its splits' rows (besides lineage)


def drop_staged(engine: sa.Engine, table: str) -> int:
    """Rewrite every curation run staged for ``table`` without the rows an erasure marked; returns how many
    staged rows went. A staging whose lineage does not match its dataset is dropped whole (the run curates its
    window again)."""
    import sqlalchemy as sa

    from ftops.warehouse.schema import curation_tables
    from ftops.warehouse.state import read_staged, stage_curation

    _, _, _, staged_t = curation_tables(table)
    with engine.connect() as conn:
        keys = conn.execute(sa.select(staged_t.c.run_key, staged_t.c.task_type)
                            .where(staged_t.c.log_table == table)).all()  # fmt: skip
    dropped = 0
    for run_key, task_type in keys:
        staged = read_staged(engine, run_key, task_type, table)
        if staged is None:
            continue
        try:
            kept = drop_erased(engine, table, staged)
        except RuntimeError:
            with engine.begin() as conn:
                conn.execute(sa.delete(staged_t).where(staged_t.c.log_table == table, staged_t.c.run_key == run_key,
                                                       staged_t.c.task_type == task_type))  # fmt: skip
            dropped += len(staged["candidates"])
            continue
        if kept is staged:
            continue
        dropped += len(staged["candidates"]) - len(kept["candidates"])
        stage_curation(engine, run_key, task_type, summary=kept["summary"], candidates=kept["candidates"],
                       train_jsonl=kept["train_jsonl"], test_jsonl=kept["test_jsonl"], metadata=kept["metadata"],
                       table=table)  # fmt: skip
    return dropped


def _row_of(line: bytes) -> dict[str, Any] | None:
    """The interaction row of a spool or rejected-file line (a rejected line wraps it in ``row``)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("row"), dict):
        return value["row"]
    return value if isinstance(value, dict) else None


def _is_user(row: dict[str, Any] | None, user_id: str) -> bool:
    return row is not None and row.get("user_id") is not None and str(row["user_id"]) == user_id


def _needles(user_id: str) -> tuple[bytes, ...]:
    """The user id as a JSON line may spell it (UTF-8 or ASCII-escaped): lines without either are not parsed."""
    return tuple({json.dumps(user_id, ensure_ascii=False).encode(), json.dumps(user_id).encode()})


def _user_lines(path: Path, user_id: str) -> list[dict[str, Any]]:
    """The user's rows in one spool file, streamed (a spool grown during an outage is not read whole)."""
    needles, rows = _needles(user_id), []
    with path.open("rb") as f:
        for line in f:
            row = _row_of(line) if any(n in line for n in needles) else None
            if row is not None and _is_user(row, user_id):
                rows.append(row)
    return rows


def _rewrite_without(path: Path, user_id: str) -> int:
    """Replace ``path`` with its lines that are not the user's, atomically (mode 0600, fsynced); returns the
    lines removed. A torn last line (a crash mid-write) is kept as it was."""
    needles, removed = _needles(user_id), 0
    tmp = path.with_name(path.name + ".erasing")  # not a segment-*.jsonl name: no flush ever picks it up
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, path.open("rb") as f:
        for line in f:
            if any(n in line for n in needles) and _is_user(_row_of(line), user_id):
                removed += 1
                continue
            out.write(line)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return removed


def scan_spool(engine: sa.Engine, table: str, spool_dir: Path, user_id: str, *, user_key: str, request_key: str
               ) -> dict[str, Any]:  # fmt: skip
    """The user's rows in the gateway's spool: marked erased, and removed from the files where that is safe.

    The ids of the user's spooled rows are marked in ``ftops_erased_rows`` first, so whichever way a row
    arrives in the log later, no FT-Ops reader sees it. The rejected file is rewritten without the user's rows.
    The segments and the active file are rewritten only when no gateway holds the spool's lock (a running
    gateway appends to them); otherwise their rows reach the log table marked, and the spool files go when it
    flushes. Files are streamed line by line.

    Returns:
        ``spooled_rows`` (the user's rows found), ``marked`` (new marks), ``removed`` (lines removed from
        spool files), ``spool_in_use`` (a gateway held the spool).
    """
    from ftops.serving.spool_rows import LOCK, REJECTED, spool_files
    from ftops.warehouse.erasure import mark_erased

    found = {"spooled_rows": 0, "marked": 0, "removed": 0, "spool_in_use": False}
    if not spool_dir.is_dir():
        return found
    data = spool_files(spool_dir)
    rejected = spool_dir / REJECTED
    ids: set[str] = set()
    holding: list[Path] = []
    for path in [*data, *([rejected] if rejected.exists() else [])]:
        mine = _user_lines(path, user_id)
        if mine:
            found["spooled_rows"] += len(mine)
            ids.update(str(r["id"]) for r in mine if r.get("id") is not None)
            holding.append(path)
    found["marked"] = mark_erased(engine, table, ids, user_key=user_key, request_key=request_key) if ids else 0
    if rejected in holding:
        found["removed"] += _rewrite_without(rejected, user_id)
        holding.remove(rejected)
    if not holding:
        return found
    lock_fd = os.open(spool_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found["spool_in_use"] = True
            log.warning("A gateway holds the spool %s: %d rows of %s stay spooled, marked erased; they leave the "
                        "spool when it flushes", spool_dir, found["spooled_rows"], user_key)  # fmt: skip
            return found
        for path in holding:
            found["removed"] += _rewrite_without(path, user_id)
    finally:
        os.close(lock_fd)
    return found


def _texts(prompts: Iterable[str]) -> list[str]:
    """The user's texts as files may hold them: raw, JSON-escaped and HTML-escaped (only substantial ones:
    a one-word prompt would match unrelated text)."""
    found: set[str] = set()
    for p in prompts:
        if len(p.strip()) >= 8:
            found |= {p, json.dumps(p)[1:-1], html.escape(p), html.escape(json.dumps(p)[1:-1])}
    return sorted(found)


def redact_runs(run_ids: Iterable[str], prompts: Collection[str], request_key: str) -> list[str]:
    """Rewrite ``evaluation/outputs.jsonl`` of each run without the examples whose prompt is the user's.

    Returns:
        The runs rewritten now.
    """
    import mlflow

    from ftops.registry import models as registry

    client = registry.client()
    redacted = []
    for run_id in run_ids:
        try:
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/{OUTPUTS}")
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact: nothing to redact
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("prompt") not in prompts]
        if len(kept) == len(lines):
            continue
        client.log_text(run_id, "".join(line + "\n" for line in kept), OUTPUTS)
        client.set_tag(run_id, REDACTED_TAG, request_key)
        redacted.append(run_id)
        log.info("Run %s: %d of %d evaluation outputs removed", run_id, len(lines) - len(kept), len(lines))
    return redacted


def delete_api_files(runs: dict[str, str], api_client: Callable[[], Any] | None) -> dict[str, list[str]]:
    """Delete the training and validation files uploaded for fine-tuning jobs (run id -> job id).

    Returns:
        ``deleted`` (file ids) and ``pending`` (job ids whose files could not be deleted: no API client).
    """
    from ftops.registry import models as registry

    out: dict[str, list[str]] = {"deleted": [], "pending": []}
    if not runs:
        return out
    if api_client is None:
        out["pending"] = sorted(runs.values())
        log.warning("No API client: the files of fine-tuning jobs %s were not deleted (set FTOPS_OPENAI_API_KEY "
                    "and run the erasure again)", ", ".join(out["pending"]))  # fmt: skip
        return out
    client = api_client()
    for run_id, job_id in runs.items():
        job = client.fine_tuning.jobs.retrieve(job_id)
        for file_id in filter(None, [job.training_file, getattr(job, "validation_file", None)]):
            try:
                client.files.delete(file_id)
            except Exception as exc:  # noqa: BLE001 - already deleted (404) is done; others are re-raised
                if getattr(exc, "status_code", None) != 404:
                    raise
            out["deleted"].append(file_id)
        registry.client().set_tag(run_id, FILES_DELETED_TAG, "true")
    return out


def remove_data_docs(root: Path, prompts: Iterable[str]) -> list[str]:
    """Delete the Data Docs pages and stored validation results under ``root`` that quote the user's text.

    Curation rebuilds the site on its next run; until then the index may link to a removed page.

    Returns:
        The paths removed, relative to ``root``.
    """
    needles = [t.encode() for t in _texts(prompts)]
    removed: list[str] = []
    if not needles or not root.is_dir():
        return removed
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        content = path.read_bytes()
        if any(n in content for n in needles):
            path.unlink()
            removed.append(str(path.relative_to(root)))
    return removed


def redact_decisions(engine: sa.Engine, table: sa.Table, prompts: Iterable[str]) -> int:
    """Remove the user's quoted text from recorded decisions (reasons and details); returns decisions changed.

    Reasons no longer quote prompts, but earlier releases quoted up to 80 characters of a failing one.
    """
    import sqlalchemy as sa

    texts = _texts(prompts)
    quotes = sorted({t[:80] for t in texts if len(t) >= 8} | set(texts), key=len, reverse=True)
    if not quotes:
        return 0
    changed = 0
    with engine.begin() as conn:
        for row in conn.execute(sa.select(table.c.decision_key, table.c.reason, table.c.details)).all():
            reason, details = row.reason or "", row.details or ""
            new_reason, new_details = reason, details
            for q in quotes:
                new_reason, new_details = new_reason.replace(q, REDACTED), new_details.replace(q, REDACTED)
            if (new_reason, new_details) != (reason, details):
                conn.execute(sa.update(table).where(table.c.decision_key == row.decision_key)
                             .values(reason=new_reason, details=new_details))  # fmt: skip
                changed += 1
    return changed


def drop_erased(engine: sa.Engine, table: str, staged: dict[str, Any]) -> dict[str, Any]:
    """What a curation run staged, less the rows an erasure marked since it read them.

    ``ftops_erase`` and publishing share a one-slot pool (and the versioning lock), so publishing sees every mark made before it: a
    dataset staged before an erasure never brings the erased examples back, nor its candidates into the pool.

    Raises:
        RuntimeError: Rows must go but the staged lineage does not match the staged dataset.
    """
    from ftops.curation.curated import STAGED_PAIRS, source_counts
    from ftops.warehouse.erasure import erased_ids

    metadata = staged.get("metadata") or {}
    lineage = metadata.get("lineage") or {}
    gone = erased_ids(engine, table, [c["row_id"] for c in staged["candidates"]]
                      + [i for s in SPLITS for i in lineage.get(s, [])]
                      + [str(p.get("row_id")) for p in metadata.get(STAGED_PAIRS) or []])  # fmt: skip
    if not gone:
        return staged
    result = {**staged, "candidates": [c for c in staged["candidates"] if c["row_id"] not in gone]}
    if staged["train_jsonl"] is not None:
        kept_lineage: dict[str, list[str]] = {}
        kept_rows: dict[str, dict[str, list[Any]]] = {k: {} for k in PER_ROW}
        for s in SPLITS:
            lines = [line for line in staged[f"{s}_jsonl"].split("\n") if line.strip()]
            if len(lines) != len(lineage.get(s) or []):
                raise RuntimeError(f"the staged {s} split has {len(lines)} rows but {len(lineage.get(s) or [])} "
                                   "lineage ids: re-curate the window")  # fmt: skip
            keep = [k for k, i in enumerate(lineage[s]) if i not in gone]
            result[f"{s}_jsonl"] = "".join(lines[k] + "\n" for k in keep)
            kept_lineage[s] = [lineage[s][k] for k in keep]
            for name in PER_ROW:  # a list that is not aligned with the split is dropped, never misaligned
                by = metadata.get(name)
                if isinstance(by, dict) and len(by.get(s) or []) == len(lines):
                    kept_rows[name][s] = [by[s][k] for k in keep]
        result["metadata"] = {**{k: v for k, v in metadata.items() if k not in PER_ROW}, "lineage": kept_lineage}
        result["metadata"] |= {name: rows for name, rows in kept_rows.items() if len(rows) == len(SPLITS)}
        if isinstance(result["metadata"].get("sources"), dict):
            result["metadata"]["source_counts"] = source_counts(result["metadata"]["sources"])
        if STAGED_PAIRS in metadata:  # a preference pair goes with its log row
            result["metadata"][STAGED_PAIRS] = [p for p in metadata[STAGED_PAIRS] if p.get("row_id") not in gone]
        result["summary"] = {**staged["summary"], "train_rows": len(kept_lineage["train"]),
                             "test_rows": len(kept_lineage["test"]), "erased_before_publishing": len(gone)}  # fmt: skip
    log.warning("%d staged rows were erased since they were curated: left out of what is published", len(gone))
    return result
