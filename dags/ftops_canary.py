"""
### ftops_canary: promote or roll back canaries from live traffic

**Reads** each task type's `canary` and `champion` aliases in the MLflow registry, and their live calls from the
warehouse table `interactions` (the router logs `model_version` as `ftops-<task_type>/<version>`).

**Decides** per canary: `hold` (too few calls, or healthy but younger than `canary.duration_hours`),
`promote` (healthy for the whole window: error rate < 0.05 and p95 latency < 2000 ms; the champion becomes
`previous`), or `rollback` (a limit broken: the canary alias is removed and the reason tagged on the version).

**Runs** every 30 minutes, or by hand for one task type.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from ftops_airflow.common import DEFAULT_ARGS, START_DATE, TAGS, TASK_TYPE, resolve_config, snapshot, warehouse_engine


@dag(
    schedule="*/30 * * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS["deployment"],
    doc_md=__doc__,
    params={
        "task_type": Param(None, type=["null", "string"], **TASK_TYPE, title="Task type",
                           description="Review this task type's canary only. Empty = every task type."),
    },
)
def ftops_canary():
    @task
    def list_canaries(params: dict | None = None) -> list[str]:
        from ftops.pipeline.common import dataset_registry

        if params["task_type"]:
            return [params["task_type"]]
        cfg = snapshot(resolve_config({}))
        return list(cfg.task_types) or dataset_registry(cfg).task_types()

    @task(map_index_template="{{ task_type }}")
    def review_canary(task_type: str) -> dict:
        from airflow.sdk import get_current_context

        from ftops.pipeline.canary import review_canary as review

        get_current_context()["task_type"] = task_type
        cfg = snapshot(resolve_config({}))
        return review(warehouse_engine(cfg.warehouse_conn_id), cfg, task_type)

    review_canary.expand(task_type=list_canaries())


ftops_canary()
