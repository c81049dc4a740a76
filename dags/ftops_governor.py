"""
### ftops_governor: decides, per task type, whether to fine-tune now, and records why

**Policies** (config `governor`; the first that fires wins):

| policy | fires when |
|---|---|
| `force` | a person asks (this form), with a reason |
| `erasure` | a model in service was trained on data since erased (`ftops erase`) and a dataset without it waits |
| `error_pattern` | ≥ `error_pattern_min` (10) similar failures (rating ≤ 2 or failed calls since the last training, clustered by prompt embedding with FAISS at cosine ≥ `error_pattern_similarity`) and the newest dataset brings new examples |
| `plateau` | the champion's live task success rose less than `plateau_min_improvement` over the last `plateau_days` (30) against the 30 before, and new examples came |
| `new_data` | the newest dataset version holds ≥ `min_new_examples` (100) examples the champion's dataset version lacks |

Data policies fire only for a dataset version no model was trained on yet.

**Guards** (each can stop any policy): a fine-tune of that dataset version still running; its fine-tunes failed
`max_failed_attempts` (3) times (given up, reported; a new dataset version starts afresh); a canary still being
judged; the cooldown, `cooldown_hours` (24) after the last training decision (not for `erasure`); the daily
API budget `daily_api_budget_usd` for the `openai` backend.

**Records** every decision, train or wait, with every policy's and guard's inputs, in the warehouse table
`ftops_decisions` (`ftops status` and `ftops mcp` show them). A task type whose evidence cannot be gathered
records the error; the others go on.

**Triggers** `ftops_finetune` once per task type to train, with the reason, policy and decision key in the
run's conf (they end on the model version's tags), under a run id made of the task type, the dataset version
and the policy (`governor__sentiment__v2__new_data`, `__retry1` after a failed one): a retried governor task
finds the run it started and skips instead of starting a second fine-tune of the same data.

**Keeps the yardstick like for like** (`measure_on_evalsets`): when a task type has an eval set
(`ftops evalset import`), its champion, then older versions a few per run, answer the latest eval-set version once
each; the figure is tagged on the version (`evalset_accuracy.v<N>`), so `ftops summary`, `ftops status` and the
FT-Ops page compare every version on the same questions. A version already measured is never evaluated again.

**Runs** hourly and whenever `ftops_curate` emits an event on the `ftops_datasets` Asset; or by hand.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from ftops_airflow.common import (
    DATASETS,
    DEFAULT_ARGS,
    START_DATE,
    TAGS,
    TASK_TYPE,
    TRAINING_POOL,
    openai_client,
    resolve_config,
    snapshot,
    warehouse_engine,
)


@dag(
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 * * * *", timezone="UTC"), assets=[DATASETS]),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS["governance"],
    doc_md=__doc__,
    params={
        "task_type": Param(None, type=["null", "string"], **TASK_TYPE, title="Task type",
                           description="Decide for this task type only. Empty = every task type with a dataset.",
                           section="What to decide"),
        "force": Param(False, type="boolean", title="Force training",
                       description="Train now even if no policy fires (the guards still apply). Needs a reason.",
                       section="Asking for training"),
        "reason": Param(None, type=["null", "string"], title="Reason",
                        description="Why you are asking (required with force); recorded with the decision and "
                        "the model version.", section="Asking for training"),
    },
)
def ftops_governor():
    @task
    def decide_training(params: dict | None = None) -> list[dict]:
        from ftops.pipeline.governor import govern

        cfg = snapshot(resolve_config({}))
        task_types = [params["task_type"]] if params["task_type"] else list(cfg.task_types)
        decisions = govern(warehouse_engine(cfg.warehouse_conn_id), cfg, task_types,
                           run_key=get_current_context()["run_id"], force=params["force"], reason=params["reason"])
        return [{"trigger_run_id": d["finetune_run_id"],
                 "conf": {"task_type": d["task_type"], "dataset_version": d["dataset_version"], "reason": d["reason"],
                          "policy": d["policy"], "decision_key": d["decision_key"]}}
                for d in decisions if d["train"]]  # fmt: skip

    @task(pool=TRAINING_POOL)
    def measure_on_evalsets(params: dict | None = None) -> list[dict]:
        from ftops.pipeline.evalsets import measure_task_types
        from ftops.registry.models import registered_task_types

        cfg = snapshot(resolve_config({}))
        task_types = [params["task_type"]] if params["task_type"] else list(cfg.task_types) or registered_task_types()
        conn_id = getattr(cfg.training.backend, "conn_id", "openai_default")
        return measure_task_types(cfg, task_types, api_client=lambda: openai_client(conn_id))

    measure_on_evalsets()

    # One run id per (task type, dataset version, policy): a retry finds the run it started and skips.
    TriggerDagRunOperator.partial(
        task_id="trigger_finetune", trigger_dag_id="ftops_finetune", skip_when_already_exists=True
    ).expand_kwargs(decide_training())


ftops_governor()
