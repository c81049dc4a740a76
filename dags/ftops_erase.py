"""
### ftops_erase: remove one user's data from everything FT-Ops derived from the logs

**Manual only**, with the user id as the log holds it. In order, each step safe to repeat (a retry or a second
run finishes the job or changes nothing):

1. marks the user's rows of the log table in `ftops_erased_rows`: no later curation or governor read sees them;
2. for every task type whose latest dataset version holds the user's examples (matched by the version's
   row-level lineage; by scrubbed prompt for versions published before lineage existed), publishes a
   successor version without them, and emits an event on the `ftops_datasets` Asset, which wakes
   `ftops_governor`;
3. tags every registered model version trained on a dataset version that held them `ftops.erasure_pending`:
   the governor's `erasure` policy retrains on the successor;
4. deletes the user's rows from the tables FT-Ops owns: `interactions_curated` and `interactions_quarantine`;
5. records the request in `ftops_decisions` (kind `erasure`).

Then the other copies: the user's rows in the gateway's spool (marked; removed from the files when no gateway
holds them, and from the rejected file), staged curation rows, evaluation outputs in MLflow of runs on the
affected versions, training files uploaded to an OpenAI-compatible API for them, Data Docs pages quoting the
user, and quoted prompts in recorded decisions. With **purge**, the superseded versions that held the user's
examples are deleted from the dataset registry, its git remote and the DVC remote.

**Not done**: the log table itself is the application's record and is never altered: deleting the user's raw
rows there is the application owner's job. See the README's erasure section for what erasure cannot reach.

Runs in the one-slot `ftops_versioning` pool, as `ftops_curate`'s publishing does: a curation run that staged
the user's rows before the erasure leaves them out when it publishes. `ftops erase --user-id-file -` (the id on
standard input) does the same from the command line, under the same lock as publishing.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from ftops_airflow.common import (
    DATASETS,
    DEFAULT_ARGS,
    START_DATE,
    TAGS,
    VERSIONING_POOL,
    openai_client,
    resolve_config,
    snapshot,
    warehouse_engine,
)


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS["governance"],
    doc_md=__doc__,
    params={
        "user_id": Param(type="string", minLength=1, title="User id",
                         description="The user whose data to erase, exactly as the log's user_id column holds it.",
                         section="Erasure"),
        "purge": Param(False, type="boolean", title="Purge superseded versions",
                       description="Also delete the earlier dataset versions that held the user's examples (tags "
                       "and DVC content, here and on the remotes) once their successor exists.", section="Erasure"),
    },
)
def ftops_erase():
    @task(pool=VERSIONING_POOL, outlets=[DATASETS])
    def erase_user_data(params: dict | None = None) -> dict:
        from functools import partial

        from ftops.pipeline.erase import erase_user

        ctx = get_current_context()
        cfg = snapshot(resolve_config({}))
        backend = cfg.training.backend  # the API connection deletes the training files FT-Ops uploaded
        api_client = partial(openai_client, backend.conn_id) if backend.kind == "openai" else None
        summary = erase_user(warehouse_engine(cfg.warehouse_conn_id), cfg, params["user_id"], run_id=ctx["run_id"],
                             purge=bool(params.get("purge")), api_client=api_client)  # fmt: skip
        ctx["outlet_events"][DATASETS].extra = {"erasure": summary["user_key"],
                                                "successor_versions": summary["successor_versions"]}  # fmt: skip
        return summary

    erase_user_data()


ftops_erase()
