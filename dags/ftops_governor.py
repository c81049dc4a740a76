"""
### ftops_governor: decides, per task type, whether to fine-tune now, and records why

**Reads** the dataset registry (newest version per task type) and the MLflow registry (which dataset versions
were already trained on).

**Policy**: train when a person asks (`force`), or when the newest dataset version has not been trained on and
holds at least `governor.min_new_examples` (100) high-quality examples. Every decision, train or wait, is
written with its reason to the warehouse table `ftops_decisions`.

**Triggers** `ftops_finetune` once per task type to train, with the reason in the run's conf, under a run id
made of the task type, the dataset version and the policy (`governor__sentiment__v2__new_data`): a retried
governor task finds the run it started and skips instead of starting a second fine-tune of the same data.

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
                           description="Decide for this task type only. Empty = every task type with a dataset."),
        "force": Param(False, type="boolean", title="Force training",
                       description="Train now even if the policy would wait."),
        "reason": Param(None, type=["null", "string"], title="Reason",
                        description="Why you are asking; recorded with the decision and the model version."),
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
                 "conf": {"task_type": d["task_type"], "dataset_version": d["dataset_version"], "reason": d["reason"]}}
                for d in decisions if d["train"]]  # fmt: skip

    # One run id per (task type, dataset version, policy): a retry finds the run it started and skips.
    TriggerDagRunOperator.partial(
        task_id="trigger_finetune", trigger_dag_id="ftops_finetune", skip_when_already_exists=True
    ).expand_kwargs(decide_training())


ftops_governor()
