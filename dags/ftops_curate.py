"""
### ftops_curate: nightly curation of interaction logs into versioned training datasets

**Reads** the warehouse table `interactions` through the `ftops_warehouse` connection (embedded SQLite under
`FTOPS_HOME` when the connection is not defined).

**Does**, per task type (a mapped `curate_dataset` → `publish_dataset` pair each, so a failing task type does
not stop the others). `curate_dataset`, in parallel across task types: read the rows logged since the
watermark (where the last completed run stopped; a retry reads the same window) → quarantine malformed rows
with a reason (all rows of a task type whose name is invalid, with nothing else done for it) → quality filters
(rating ≥ 4, success, response length, no error text, latency, bursts of top ratings from one user) → scrub
PII and secrets → with `teacher.enabled`, failed and low-rated prompts (scrubbed) answered by the teacher
model of the `ftops_teacher` connection within a nightly budget (error-pattern clusters first; answers checked
and cached in `ftops_teacher_answers`; a teacher outage means no relabel, never a failed run) → merge with earlier runs' candidates → drop exact duplicates → cap each user's share →
validate the raw batch with Great Expectations → embed prompts (all-MiniLM-L6-v2, cached by content hash) →
diversity selection in quality order (exact greedy on numpy; an approximate FAISS index when pool and
target both exceed `ann_min_pool`) → stable train/test split by prompt hash → leakage guard against every published version (FAISS)
→ validate the dataset →
chat JSONL, staged in the warehouse. `publish_dataset`, one at a time (pool `ftops_versioning`, as DVC holds a
repository lock): version the staged dataset, add the candidates to the pool, mark the window done.

**Writes** a DVC-tracked dataset version, tagged `dataset/<task_type>/v<N>` in the dataset registry and pushed
to the DVC remote (same content ⇒ same version), with `metadata.json` (counts per reason, scrubbed counts,
capped users, diversity score, the leakage guard's counts, window, validation results, config); quarantined rows (scrubbed, every copy of
a repeated id) to `interactions_quarantine`; the curated result, until it is published, to
`ftops_curation_staged`; candidates to `interactions_curated`; the window to `ftops_curation_runs`; Data Docs
under `FTOPS_HOME/data_docs` (path in the task log); and one event on the `ftops_datasets` Asset per task type
published (task type, status, version, row counts, content hash), which wakes `ftops_governor`. A dry run, a
window with no new rows and an invalid task type publish nothing: their `publish_dataset` is skipped and emits
no event.

**Trigger** nightly at 02:00, or by hand with the form below.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from ftops_airflow.common import (
    DATASETS,
    DEFAULT_ARGS,
    START_DATE,
    TAGS,
    TASK_TYPE,
    VERSIONING_POOL,
    openai_client,
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
                            description="Task types to curate; empty = every task type in the logs.",
                            section="What to curate"),
        "since": Param(None, type=["null", "string"], format="date-time", title="Since",
                       description="Re-read logs from this time on (ISO 8601). Empty = from the watermark "
                                   "(where the last completed run stopped; all history on a first run).",
                       section="What to curate"),
        "min_rating": Param(None, type=["null", "number"], minimum=1, maximum=5, title="Minimum rating",
                            description="Lowest rating kept. Empty = config (4).", section="Selection"),
        "target_size": Param(None, type=["null", "integer"], minimum=1, title="Target size",
                             description="Most examples per dataset version. Empty = config (500).",
                             section="Selection"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Curate and validate, but write and version nothing (and emit no Asset event).",
                         section="Run"),
    },
)
def ftops_curate():
    @task
    def resolve_run_config(params: dict | None = None) -> dict:
        return resolve_config({"curation.quality_threshold": params["min_rating"],
                               "curation.target_size": params["target_size"]})

    @task
    def list_task_types(config: dict, params: dict | None = None) -> list[str]:
        from ftops.pipeline.curate import task_types_to_curate

        cfg = snapshot(config)
        return task_types_to_curate(warehouse_engine(cfg.warehouse_conn_id), cfg, params["task_types"])

    @task(map_index_template="{{ task_type }}", multiple_outputs=False)
    def curate_dataset(task_type: str, config: dict, params: dict | None = None) -> dict:
        from ftops.pipeline.curate import curate_window

        ctx = get_current_context()
        ctx["task_type"] = task_type  # names the mapped instance in the UI
        cfg = snapshot(config)
        since = datetime.fromisoformat(params["since"]) if params["since"] else None
        return curate_window(warehouse_engine(cfg.warehouse_conn_id), cfg, task_type, run_key=ctx["run_id"],
                             since=since, dry_run=params["dry_run"],
                             teacher_client=lambda: openai_client(cfg.teacher.conn_id),
                             judge_client=lambda: openai_client(cfg.evaluation.judge.conn_id))

    @task(pool=VERSIONING_POOL, outlets=[DATASETS], map_index_template="{{ task_type }}", multiple_outputs=False)
    def publish_dataset(curated: dict, config: dict) -> dict:
        ctx = get_current_context()
        ctx["task_type"] = curated["task_type"]
        if not curated["staged"]:  # a skipped instance emits no Asset event
            raise AirflowSkipException(f"{curated['task_type']}: {curated['status']}, nothing to publish")
        from ftops.pipeline.curate import publish_window

        cfg = snapshot(config)
        result = publish_window(warehouse_engine(cfg.warehouse_conn_id), cfg, curated["task_type"],
                                run_key=ctx["run_id"])
        ctx["outlet_events"][DATASETS].extra = {k: result.get(k) for k in
            ("task_type", "status", "dataset_version", "content_hash", "rows_read", "accepted", "train_rows",
             "test_rows", "window")}
        return result

    @task_group(prefix_group_id=False)
    def curate_and_publish(task_type: str, config: dict):
        curated = curate_dataset(task_type, config)
        return curated, publish_dataset(curated, config)

    # none_failed: runs when publish_dataset instances were skipped. One XCom, not one per task type (a task
    # type that is not a valid name, like "../x", would break an XCom key)
    @task(trigger_rule="none_failed", multiple_outputs=False)
    def report_curation(curated: list[dict], published: list[dict]) -> dict:
        from ftops.pipeline.curate import summarise_results

        return summarise_results(curated, published)

    config = resolve_run_config()
    task_types = list_task_types(config)
    curated, published = curate_and_publish.partial(config=config).expand(task_type=task_types)
    report_curation(curated, published)

ftops_curate()
