"""
### ftops_curate: nightly curation of interaction logs into versioned training datasets

**Reads** the warehouse table `interactions` through the `ftops_warehouse` connection (embedded SQLite under
`FTOPS_HOME` when the connection is not defined).

**Does**, per task type (one mapped task each, so a failing task type does not stop the others):
read the rows logged since the watermark (where the last completed run stopped; a retry reads the same
window) → quarantine malformed rows with a reason → quality filters (rating ≥ 4, success, response length,
no error text, latency, bursts of top ratings from one user) → scrub PII and secrets → merge with earlier
runs' candidates → drop exact duplicates → cap each user's share → validate the raw batch with Great
Expectations → embed prompts (all-MiniLM-L6-v2, cached by content hash) → FAISS diversity selection in
quality order → stable train/test split by prompt hash → validate the dataset → chat JSONL.

**Writes** a DVC-tracked dataset version, tagged `dataset/<task_type>/v<N>` in the dataset registry and pushed
to the DVC remote (same content ⇒ same version), with `metadata.json` (counts per reason, scrubbed counts,
capped users, diversity score, window, validation results, config); quarantined rows (scrubbed) to
`interactions_quarantine`; candidates to `interactions_curated`; the window to `ftops_curation_runs`; Data
Docs under `FTOPS_HOME/data_docs` (path in the task log); and one event on the `ftops_datasets` Asset per
task type (task type, status, version, row counts, content hash), which wakes `ftops_governor`.

**Trigger** nightly at 02:00, or by hand with the form below.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task

from ftops_airflow.common import (
    DATASETS,
    DEFAULT_ARGS,
    START_DATE,
    TAGS,
    TASK_TYPE,
    VERSIONING_POOL,
    resolve_config,
    snapshot,
    warehouse_engine,
)


@dag(
    schedule="0 2 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS["curation"],
    doc_md=__doc__,
    params={
        "task_types": Param([], type="array", items={"type": "string", **TASK_TYPE}, title="Task types",
                            description="Task types to curate; empty = every task type in the logs."),
        "since": Param(None, type=["null", "string"], format="date-time", title="Since",
                       description="Re-read logs from this time on (ISO 8601). Empty = from the watermark "
                                   "(where the last completed run stopped; all history on a first run)."),
        "min_rating": Param(None, type=["null", "number"], minimum=1, maximum=5, title="Minimum rating",
                            description="Lowest rating kept. Empty = config (4)."),
        "target_size": Param(None, type=["null", "integer"], minimum=1, title="Target size",
                             description="Most examples per dataset version. Empty = config (500)."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Curate and validate, but do not version (the Asset event says dry_run)."),
    },
)
def ftops_curate():
    @task
    def resolve_run_config(params: dict | None = None) -> dict:
        return resolve_config({"curation.quality_threshold": params["min_rating"],
                               "curation.target_size": params["target_size"]})

    @task
    def list_task_types(config: dict, params: dict | None = None) -> list[str]:
        from ftops.warehouse.schema import list_task_types as from_logs

        cfg = snapshot(config)
        chosen = params["task_types"] or list(cfg.task_types)
        return chosen or from_logs(warehouse_engine(cfg.warehouse_conn_id), cfg.interactions_table)

    @task(pool=VERSIONING_POOL, outlets=[DATASETS], map_index_template="{{ task_type }}")
    def curate_dataset(task_type: str, config: dict, params: dict | None = None) -> dict:
        from ftops.pipeline.curate import curate_task_type

        ctx = get_current_context()
        ctx["task_type"] = task_type  # names the mapped instance in the UI
        cfg = snapshot(config)
        since = datetime.fromisoformat(params["since"]) if params["since"] else None
        result = curate_task_type(warehouse_engine(cfg.warehouse_conn_id), cfg, task_type,
                                  run_key=ctx["run_id"], since=since, dry_run=params["dry_run"])
        ctx["outlet_events"][DATASETS].extra = {k: result.get(k) for k in
            ("task_type", "status", "dataset_version", "content_hash", "rows_read", "accepted", "train_rows",
             "test_rows", "window")}
        return result

    @task
    def report_curation(results: list[dict]) -> dict:
        return {r["task_type"]: r.get("dataset_version") or r["status"] for r in results}

    config = resolve_run_config()
    task_types = list_task_types(config)
    report_curation(curate_dataset.partial(config=config).expand(task_type=task_types))


ftops_curate()
