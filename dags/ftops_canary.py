"""
### ftops_canary: ramp, promote or roll back canaries on what their users saw

**Reads** each task type's `canary` and `champion` aliases in the MLflow registry, the canary's ramp state
from its version tags (`deployed_at`, `ramp_step`, `ramp_started_at`), and both versions' live calls from the
warehouse table `interactions` (the router logs `model_version` as `ftops-<task_type>/<version>`): error rate,
p95 latency, user ratings and task success (`success` and, where rated, a rating ≥ `canary.success_min_rating`)
since the canary was deployed, and the canary's calls in its current ramp step.

**Decides** per canary (settings in the `canary:` section of the config):
- `hold`: fewer than `min_rollback_requests` canary calls, or champion calls to compare; not yet *shown not
  worse* (fewer than `min_requests` calls, or an upper confidence bound of a harm not below its minimum
  effect: the reason says about how many calls are needed); the service slow for champion and canary alike;
  or the step is younger than `duration_hours / len(ramp_percent)`;
- `rollback` at once: error rate ≥ `max_error_rate`; canary p95 > max(champion p95 × `max_latency_ratio`,
  champion p95 + `latency_margin_ms`) over the same window or step, or ≥ `max_latency_p95_ms` while the
  champion is under it (only spans both served are compared: at 100 % the window before the step); or the canary is *significantly worse* than the champion: one-sided tests at
  `significance` (Bonferroni over the metrics) on error rate and task success (two-proportion z-test) and
  rating (Mann-Whitney U, with ≥ `min_rated` ratings each), counted only when the difference is at least
  `min_effect` / `min_rating_drop`. The `canary` alias is removed and the reason tagged on the version;
- `ramp`: a healthy step shown not worse is over, so the canary's `traffic_percent` tag moves to the next
  share of `ramp_percent` (default 10 → 50 → 100 %); the gateway's router picks it up within seconds;
- `promote`: the last step is over (≥ `duration_hours` in all): the canary becomes `champion`, the old
  champion `previous`.

Every move names the version judged and is skipped if the canary changed meanwhile, so reruns and retries
are safe. The verdict, with the metrics and test results, is the task's return value (XCom).

**Runs** every 30 minutes, or by hand for one task type; each review in the one-slot `ftops_aliases` pool,
with every other task that moves registry aliases (`ftops_rollback`, `ftops_finetune`'s deploy).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from ftops_airflow.common import (
    ALIASES_POOL,
    DEFAULT_ARGS,
    START_DATE,
    TAGS,
    TASK_TYPE,
    resolve_config,
    snapshot,
    warehouse_engine,
)


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
                           description="Review this task type's canary only. Empty = every task type.",
                           section="What to review"),
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

    @task(pool=ALIASES_POOL, map_index_template="{{ task_type }}")
    def review_canary(task_type: str) -> dict:
        from airflow.sdk import get_current_context

        from ftops.pipeline.canary import review_canary as review

        get_current_context()["task_type"] = task_type
        cfg = snapshot(resolve_config({}))
        return review(warehouse_engine(cfg.warehouse_conn_id), cfg, task_type)

    review_canary.expand(task_type=list_canaries())


ftops_canary()
