"""
### ftops_rollback: put an earlier model version back in service

**Manual only.** Moves the `champion` alias of `ftops-<task_type>` to `to_version` (default: the version the
`previous` alias points at), marks the replaced champion `previous`, and removes any `canary` alias so that
nothing new keeps serving traffic. Every alias move is logged and tagged on the versions.

**Guarded**, as the MCP `request_rollback` tool is: a target that is archived, failed the gate, was trained on
since-erased data (`ftops.erasure_pending`), never served, or is the champion or the canary fails the run at
once with the guard's reason (no retry). **Safe to retry**: the target is resolved once and recorded on the
versions before any alias moves, the champion moves only from the champion the run started from, and a retry
after a crash finishes the same move. Runs in the one-slot `ftops_aliases` pool with every other alias move.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from ftops_airflow.common import ALIASES_POOL, DEFAULT_ARGS, START_DATE, TAGS, TASK_TYPE


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
    @task(pool=ALIASES_POOL)
    def rollback_champion(params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from ftops.deployment.guards import RollbackRefused
        from ftops.deployment.rollout import ChampionMovedError
        from ftops.pipeline.rollback import rollback

        try:  # the run id names the move, so a retry of this run finishes it instead of rolling back again
            return rollback(params["task_type"], params["to_version"], key=get_current_context()["run_id"])
        except (RollbackRefused, ChampionMovedError, LookupError) as exc:  # a retry cannot fix these
            raise AirflowFailException(str(exc)) from exc

    rollback_champion()


ftops_rollback()
