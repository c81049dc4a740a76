"""
### ftops_rollback: put an earlier model version back in service

**Manual only.** Moves the `champion` alias of `ftops-<task_type>` to `to_version` (default: the version the
`previous` alias points at), marks the replaced champion `previous`, and removes any `canary` alias so that
nothing new keeps serving traffic. Every alias move is logged and tagged on the versions.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from ftops_airflow.common import DEFAULT_ARGS, START_DATE, TAGS, TASK_TYPE


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS["deployment"],
    doc_md=__doc__,
    params={
        "task_type": Param(type="string", **TASK_TYPE, minLength=1, title="Task type",
                           description="Whose champion to roll back (required: a rollback changes what serves traffic).",
                           section="Rollback"),
        "to_version": Param(None, type=["null", "string"], pattern=r"^[0-9]+$", title="To version",
                            description="Registered version number to restore. Empty = the 'previous' alias.",
                            section="Rollback"),
    },
)
def ftops_rollback():
    @task
    def rollback_champion(params: dict | None = None) -> dict:
        from ftops.pipeline.rollback import rollback

        return rollback(params["task_type"], params["to_version"])

    rollback_champion()


ftops_rollback()
