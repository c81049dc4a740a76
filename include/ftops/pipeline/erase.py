"""``ftops erase`` and the ``ftops_erase`` DAG: remove one user's data from everything FT-Ops derived from the
interaction logs.

:func:`erase_user` works in an order that a re-run after a crash between any two steps completes (every step
is idempotent, and each finds its work from the stores, not from an earlier step's memory):

1. mark the user's log rows erased (``ftops.warehouse.erasure``): from then on no FT-Ops reader of the log
   reads them (curation, the governor's error patterns), and publishing drops any that a curation run in
   flight staged before the mark (:func:`ftops.pipeline.erase_copies.drop_erased`);
2. for every task type whose latest dataset version holds the user's examples, publish a successor version
   without them (its metadata names the parent and the request; its lineage lacks the user's rows) and
   without their preference pairs (by ``row_id``; the other users' pairs are kept);
3. tag every registered model version trained on a dataset version that held them ``ftops.erasure_pending``,
   so that the governor's ``erasure`` policy retrains on the successor;
4. delete the user's rows from the tables FT-Ops owns: the curated pool, the quarantine, and the teacher's
   answers to their prompts (``ftops.warehouse.teacher_store``);
5. record the request in ``ftops_decisions`` (kind ``erasure``): one decision per task type it changed, or one
   for ``*`` when only the warehouse changed.

Before step 1 the gateway's spool is scanned (its rows of the user are marked too, so they are left out when
they arrive); after step 1 the other copies go (:mod:`ftops.pipeline.erase_copies`): staged curation rows,
evaluation outputs in MLflow of runs on the affected versions, the training files uploaded to an
OpenAI-compatible API for them, Data Docs pages quoting the user, and quotes of the user's prompts in recorded
decisions. With ``purge``, the superseded versions that held the user's examples are deleted from the dataset
registry and its remotes, with their DVC content, and the model versions trained on them are tagged
``ftops.dataset_purged``.

A version's examples are matched to the user by its row-level lineage (``metadata.lineage``: the log row id
behind each example). Versions published before lineage existed are matched by content instead: an example
goes when its prompt equals one of the user's prompts as curation scrubbed it, so another user's identical
prompt goes with it (more is removed, never less).

Not done here: the application's log table is never altered (the raw rows are the application's record;
deleting them is the application owner's job). Without ``purge`` earlier dataset versions keep their tags and
content. The user id itself is never logged or recorded, only its pseudonymous key
(``ftops.curation.rules.user_key``; marks and pool rows made under the earlier unsalted key are found too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.core.names import key_digest
from ftops.datasets.versions import SPLITS
from ftops.pipeline.common import dataset_registry

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ftops.datasets.versions import DatasetRegistry, DatasetVersion

log = logging.getLogger(__name__)
PENDING_TAG = "ftops.erasure_pending"  # on model versions trained on data that has since been erased
PURGED_TAG = "ftops.dataset_purged"  # on model versions whose dataset version an erasure purged


def erase_user(
    engine: sa.Engine,
    cfg: FtopsConfig,
    user_id: str,
    *,
    request_key: str | None = None,
    run_id: str | None = None,
    purge: bool = False,
    api_client: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Erase one user's data from FT-Ops' tables, the latest dataset versions and the models' standing.

    Args:
        engine: The warehouse.
        cfg: The config (log table, dataset registry).
        user_id: The user id as the log holds it (compared as text). Never logged or recorded.
        request_key: Names the request in the marks, the model tags and the decisions (e.g. a ticket id);
            default ``erasure-<user key>``.
        run_id: The DAG run that asked, recorded with the decisions.
        purge: Also delete the superseded dataset versions that held the user's examples (tags and content).
        api_client: Makes an OpenAI-compatible client, to delete the training files of API fine-tunes on the
            affected versions; None: from ``FTOPS_OPENAI_API_KEY`` when set, else those files are reported
            as ``api_files_pending``.

    Returns:
        ``user_key``, ``request_key``, ``rows_marked``, ``pool_rows_deleted``, ``quarantine_rows_deleted``,
        ``successor_versions`` (task type -> tag), ``tagged_model_versions`` (task type -> versions),
        ``held_by`` (task type -> dataset versions that hold the user's examples), ``decisions`` (keys
        recorded), ``log_rows`` (the user's rows still in the application's log table, unaltered), the other
        copies (``spool``, ``staged_rows_dropped``, ``runs_redacted``, ``api_files_deleted``,
        ``api_files_pending``, ``data_docs_removed``, ``decisions_redacted``, ``purged_versions``) and
        ``changed`` (False when a re-run found everything done).

    Raises:
        ValueError: The user id is empty.
        LookupError: No row of the log has this user id and nothing was erased for it; or the log table is
            missing.
        RuntimeError: The DVC push or git failed.
        RegistryUnavailableError: The MLflow registry does not answer.
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    from ftops.warehouse.locks import versioning_lock

    with versioning_lock(engine, what="ftops erase"):  # the pool does not reach the CLI or the MCP server
        return _erase_user(engine, cfg, user_id, request_key=request_key, run_id=run_id, purge=purge,
                           api_client=api_client)  # fmt: skip


def _erase_user(engine: sa.Engine, cfg: FtopsConfig, user_id: str, *, request_key: str | None, run_id: str | None,
                purge: bool, api_client: Callable[[], Any] | None) -> dict[str, Any]:  # fmt: skip
    from ftops.core.userkey import user_keys
    from ftops.curation.rules import user_key
    from ftops.curation.scrub import scrub
    from ftops.pipeline import erase_copies as copies
    from ftops.pipeline.dashboard import data_docs_root
    from ftops.serving.interaction_log import default_spool_dir
    from ftops.warehouse import erasure, teacher_store
    from ftops.warehouse.logread import log_columns
    from ftops.warehouse.schema import curation_tables, ensure_state_tables, log_tables

    if user_key(user_id) is None:
        raise ValueError("the user id is empty")
    keys = user_keys(user_id)  # the current key, and the unsalted one of earlier releases
    key = keys[0]
    request = request_key or f"erasure-{key}"
    table = cfg.interactions_table
    log_columns(engine, table)  # LookupError when the log table is missing
    ensure_state_tables(engine, table)
    _, log_t, quarantine, decisions_t = log_tables(table)
    _, pool, _, _ = curation_tables(table)

    logged = erasure.user_rows(engine, log_t, user_id)
    pooled = erasure.pool_rows(engine, pool, keys)
    spool = copies.scan_spool(engine, table, default_spool_dir(table), user_id, user_key=key, request_key=request)
    ids = {r["id"] for r in logged if r["id"] is not None} | {r["row_id"] for r in pooled}
    ids |= erasure.marked_rows(engine, table, keys)
    if not logged and not ids:
        raise LookupError(f"no row of the log table {table!r} has this user id, and nothing was erased for its "
                          f"key {key}: check the id (it is compared as text, exactly)")  # fmt: skip
    marked = erasure.mark_erased(engine, table, ids, user_key=key, request_key=request)
    log.info("Erasure %s (%s): %d log rows marked erased, %d already marked", request, key, marked, len(ids) - marked)

    staged_dropped = copies.drop_staged(engine, table)
    # the prompts as curation stored them: for dataset versions without lineage
    prompts = {scrub(r["prompt"]).text for r in logged if isinstance(r["prompt"], str)} | {r["prompt"] for r in pooled}
    raw = {r["prompt"] for r in logged if isinstance(r["prompt"], str)}
    datasets = dataset_registry(cfg)
    found = {t: _erase_from_task_type(datasets, t, ids, prompts, keys, request) for t in datasets.task_types()}
    pool_deleted, quarantine_deleted = erasure.delete_user_rows(
        engine, pool, quarantine, user_key=keys, row_ids=ids, stored_user_ids={scrub(str(user_id)).text}
    )
    teacher_deleted = teacher_store.delete_for_rows(engine, table, ids)
    runs = {run_id: tags for f in found.values() for run_id, tags in f["runs"].items()}
    api_runs = {r: tags["openai.job_id"] for r, tags in runs.items()
                if tags.get("openai.job_id") and "ftops.api_files_deleted" not in tags}  # fmt: skip
    files = copies.delete_api_files(api_runs, api_client or _env_api_client())
    purged = _purge(datasets, found, key, request) if purge else []
    summary: dict[str, Any] = {
        "user_key": key,
        "request_key": request,
        "rows_marked": marked,
        "pool_rows_deleted": pool_deleted,
        "quarantine_rows_deleted": quarantine_deleted,
        "teacher_answers_deleted": teacher_deleted,
        "successor_versions": {t: f["successor"] for t, f in found.items() if f["successor"]},
        "tagged_model_versions": {t: f["tagged"] for t, f in found.items() if f["tagged"]},
        "held_by": {t: f["held"] for t, f in found.items() if f["held"]},
        "log_rows": len(logged),
        "spool": spool,
        "staged_rows_dropped": staged_dropped,
        "runs_redacted": copies.redact_runs(runs, prompts | raw, request),
        "api_files_deleted": files["deleted"],
        "api_files_pending": files["pending"],
        "data_docs_removed": copies.remove_data_docs(data_docs_root(), prompts | raw),
        "decisions_redacted": copies.redact_decisions(engine, decisions_t, prompts | raw),
        "purged_versions": purged,
    }
    summary["decisions"] = _record_decisions(engine, summary, found,
                                             marked + pool_deleted + quarantine_deleted + teacher_deleted,
                                             keys=keys, run_id=run_id)  # fmt: skip
    summary["changed"] = bool(marked or pool_deleted or quarantine_deleted or teacher_deleted
                              or summary["successor_versions"] or summary["tagged_model_versions"] or summary["decisions"] or spool["marked"]
                              or spool["removed"] or staged_dropped or summary["runs_redacted"] or files["deleted"]
                              or summary["data_docs_removed"] or summary["decisions_redacted"] or purged)  # fmt: skip
    log.info("Erasure %s (%s) %s: %s", request, key, "done" if summary["changed"] else "had nothing left to do",
             json.dumps({k: v for k, v in summary.items() if k not in ("user_key", "request_key")}, sort_keys=True))
    return summary


def _env_api_client() -> Callable[[], Any] | None:
    """A client of the OpenAI-compatible API from ``FTOPS_OPENAI_API_KEY`` (and ``FTOPS_OPENAI_BASE_URL``)."""
    import os
    from functools import partial

    from ftops.core.openai_api import make_client

    key = os.environ.get("FTOPS_OPENAI_API_KEY")
    if not key:
        return None
    return partial(make_client, key, os.environ.get("FTOPS_OPENAI_BASE_URL"), key_source="FTOPS_OPENAI_API_KEY")


def _purge(datasets: DatasetRegistry, found: dict[str, dict[str, Any]], key: str, request: str) -> list[str]:
    """``--purge``: the held versions that have a successor go; models trained on them say so in a tag."""
    from ftops.core.config import ftops_home
    from ftops.datasets.purge import purge_versions
    from ftops.registry import models as registry

    held = {tag for f in found.values() for tag in f["held"] if tag != f["latest"]}
    hashes = {v.tag: v.content_hash for t in found for v in datasets.versions(t) if v.tag in held}
    purged = purge_versions(datasets, held)
    for tag in purged:  # this worker's copy of the version's prompts (the leakage guard's history); others
        # drop theirs at their next curation, when the tag is no longer listed
        (ftops_home() / "cache" / "published" / tag.split("/")[1] / f"{hashes[tag]}.json").unlink(missing_ok=True)
    gone = set(purged) | {t for t in held if t not in {v.tag for v in datasets.versions(t.split("/")[1])}}
    for task_type in found:
        for mv in registry.versions(task_type):
            version = mv.tags.get("dataset_version")
            if version in gone and PURGED_TAG not in mv.tags:
                registry.set_tags(task_type, str(mv.version), {PURGED_TAG: f"{version} purged by {request} ({key})"})
    return purged


def _erase_from_task_type(
    datasets: DatasetRegistry, task_type: str, ids: set[str], prompts: set[str], keys: tuple[str, ...], request: str
) -> dict[str, Any]:
    """Steps 2 and 3 for one task type: the successor of a latest version that holds the user's examples, and
    the tags on model versions trained on any version that held them.

    Only the latest version and the versions some model or run was trained on are read (through DVC).

    Returns:
        ``held`` (dataset tags), ``successor`` (tag published now, or None), ``tagged`` (model versions tagged
        now), ``latest`` and ``latest_erasure`` (the latest version's ``erasure`` metadata, if any, after this),
        ``runs`` (MLflow runs on a held version: run id -> tags).
    """
    from ftops.registry import models as registry

    key = keys[0]
    versions = datasets.versions(task_type)
    model_versions = registry.versions(task_type)
    all_runs = registry.client().search_runs([registry.experiment_id(task_type)], max_results=5000)
    trained = {mv.tags.get("dataset_version") for mv in model_versions} | {
        r.data.tags.get("dataset_version") for r in all_runs}
    latest = versions[-1]
    latest_meta: dict[str, Any] = {}
    held: list[str] = []
    successor: str | None = None
    for version in versions:
        if version != latest and version.tag not in trained:
            continue
        meta = datasets.read_metadata(version)
        if version == latest:
            latest_meta = meta
        positions, matched_by = _positions(datasets, version, meta, ids, prompts)
        if not any(positions.values()):
            continue
        held.append(version.tag)
        if version == latest:
            published = _publish_successor(datasets, version, meta, positions, matched_by, key, request,
                                           erased=(ids, prompts))  # fmt: skip
            latest, successor = published, published.tag
            latest_meta = datasets.read_metadata(published)
    tagged: list[str] = []
    mark = request if key in request else f"{request} for {key}"
    for mv in model_versions:
        pending = mv.tags.get(PENDING_TAG, "")
        if mv.tags.get("dataset_version") in held and not any(k in pending for k in keys):  # once per user
            registry.set_tags(task_type, str(mv.version), {PENDING_TAG: ", ".join(filter(None, [pending, mark]))})
            tagged.append(str(mv.version))
    if held:
        log.info("%s: %s held the examples of %s; successor %s; model versions tagged %s: %s", task_type,
                 ", ".join(held), key, successor or "none needed", PENDING_TAG, tagged or "none new")  # fmt: skip
    runs = {r.info.run_id: dict(r.data.tags) for r in all_runs if r.data.tags.get("dataset_version") in held}
    return {"held": held, "successor": successor, "tagged": tagged, "latest": latest.tag,
            "latest_erasure": latest_meta.get("erasure"), "runs": runs}  # fmt: skip


def _positions(
    datasets: DatasetRegistry, version: DatasetVersion, meta: dict[str, Any], ids: set[str], prompts: set[str]
) -> tuple[dict[str, list[int]], str]:
    """Where the user's examples are in each split of a version, and how they were found (lineage, content)."""
    lineage = meta.get("lineage")
    if isinstance(lineage, dict) and all(len(lineage.get(s) or []) == meta.get(f"{s}_rows") for s in SPLITS):
        return {s: [i for i, row_id in enumerate(lineage[s]) if row_id in ids] for s in SPLITS}, "lineage"
    log.warning("%s has no row-level lineage: the user's examples are matched by their scrubbed prompts",
                version.tag)  # fmt: skip
    return {s: [i for i, row in enumerate(datasets.read(version, s)) if _prompt(row) in prompts]
            for s in SPLITS}, "content"  # fmt: skip


def _prompt(example: dict[str, Any]) -> str | None:
    return next((m.get("content") for m in example.get("messages", []) if m.get("role") == "user"), None)


def _publish_successor(
    datasets: DatasetRegistry,
    parent: DatasetVersion,
    meta: dict[str, Any],
    positions: dict[str, list[int]],
    matched_by: str,
    key: str,
    request: str,
    *,
    erased: tuple[set[str], set[str]],
) -> DatasetVersion:
    """A new latest version of ``parent`` without the examples at ``positions`` and without the preference pairs
    of the ``erased`` log row ids (for a version without lineage: of the erased scrubbed prompts); the other
    pairs are kept (retry-safe: same content)."""
    from ftops.curation.curated import source_counts
    from ftops.pipeline.erase_copies import PER_ROW

    kept = {s: [r for i, r in enumerate(datasets.read(parent, s)) if i not in set(positions[s])] for s in SPLITS}
    per_row = ("lineage", *PER_ROW)  # lists aligned with the splits' rows
    metadata = {k: v for k, v in meta.items()
                if k not in ("content_hash", "train_rows", "test_rows", "preference_rows", *per_row)}  # fmt: skip
    ids, prompts = erased
    parent_pairs = datasets.read_preference(parent)
    pairs = [p for p in parent_pairs if p.get("row_id") not in ids
             and (matched_by == "lineage" or _prompt(p) not in prompts)]  # fmt: skip
    metadata |= {"parent": parent.tag, "erasure": {"user_key": key, "request_key": request, "matched_by": matched_by,
                                                   "removed": {s: len(positions[s]) for s in SPLITS},
                                                   "preference_removed": len(parent_pairs) - len(pairs)}}  # fmt: skip
    if matched_by == "lineage":
        for key_ in (k for k in per_row if isinstance(meta.get(k), dict)):
            metadata[key_] = {s: [r for i, r in enumerate(meta[key_][s]) if i not in set(positions[s])]
                              for s in SPLITS}  # fmt: skip
        if isinstance(metadata.get("sources"), dict):
            metadata["source_counts"] = source_counts(metadata["sources"])
    version = datasets.publish(parent.task_type, kept["train"], kept["test"], metadata, reuse_older=False,
                               preference=pairs)  # fmt: skip
    log.info("%s: %d train and %d test examples of %s removed from %s: %s", parent.task_type,
             len(positions["train"]), len(positions["test"]), key, parent.tag, version.tag)  # fmt: skip
    return version


def _record_decisions(
    engine: sa.Engine,
    summary: dict[str, Any],
    found: dict[str, dict[str, Any]],
    warehouse_changes: int,
    *,
    keys: tuple[str, ...],
    run_id: str | None,
) -> list[str]:
    """Step 5: one decision per task type changed now, or whose erasure successor has no decision yet (a crash
    before recording); else one for ``*`` when the warehouse changed now, or when the user has no erasure
    decision at all yet. Returns the keys recorded."""
    from ftops.warehouse.state import read_decisions, record_decision

    key, request = summary["user_key"], summary["request_key"]
    earlier = [d for d in read_decisions(engine, kind="erasure") if d["details"].get("user_key") in keys]
    decided = {(d["task_type"], d["dataset_version"]) for d in earlier}
    base = {k: summary[k] for k in ("user_key", "request_key", "rows_marked", "pool_rows_deleted",
                                    "quarantine_rows_deleted", "log_rows")}  # fmt: skip
    now = datetime.now(UTC)
    recorded: list[str] = []

    def record(task_type: str, reason: str, dataset_version: str | None, details: dict[str, Any]) -> None:
        details = base | details
        decision_key = f"erasure:{key}:{task_type}:{key_digest(json.dumps(details, sort_keys=True))[:16]}"
        record_decision(engine, {"decision_key": decision_key, "decided_at": now, "task_type": task_type,
                                 "train": False, "reason": reason, "dataset_version": dataset_version,
                                 "details": details, "kind": "erasure", "policy": "erasure", "run_id": run_id})  # fmt: skip
        recorded.append(decision_key)

    for task_type, f in sorted(found.items()):
        erased_here = (f["latest_erasure"] or {}).get("user_key") in keys
        if not (f["successor"] or f["tagged"] or (erased_here and (task_type, f["latest"]) not in decided)):
            continue
        removed = (f["latest_erasure"] or {}).get("removed", {}) if erased_here else {}
        what = [f"{sum(removed.values())} examples removed → {f['latest']}" if erased_here else
                f"{f['latest']} holds none of its examples"]  # fmt: skip
        if f["tagged"]:
            what.append(f"model versions {', '.join(f['tagged'])} tagged {PENDING_TAG}")
        record(task_type, f"erasure of {key} ({request}): " + "; ".join(what), f["latest"],
               {"held_by": f["held"], "successor": f["successor"], "removed": removed, "tagged": f["tagged"]})
    if not recorded and (warehouse_changes or not earlier):
        record("*", f"erasure of {key} ({request}): {summary['rows_marked']} log rows marked erased, "
               f"{summary['pool_rows_deleted']} pool and {summary['quarantine_rows_deleted']} quarantine rows "
               "deleted; no dataset version held its examples", None, {})  # fmt: skip
    return recorded
