"""
### ftops_finetune: train a candidate, evaluate it against the model in service, register it, decide

**Triggered** by `ftops_governor` (with its reason) or by hand with the form below.

1. `resolve_run_config` validates every training choice from the form before any work starts: the values,
   that the dataset version exists and that the base model can be found.
2. `train_candidate` fine-tunes the base model (Transformers: `method=full` trains every weight, as the
   shipped config does for the tiny local model; `method=lora` trains a PEFT LoRA adapter, for hub models) on the dataset version's train split
   (`objective=sft`, rows repeated by their target's source weight), on its preference pairs with TRL's DPO
   (`objective=dpo`), or both in turn (`sft_then_dpo`), as an MLflow run in experiment `ftops-<task_type>`: params,
   the dataset as an input, progress by step (`train_loss`, `tokens_per_s`, `eta_s`), the weights and the
   model in MLflow's `transformers` flavour (`mlflow.transformers.load_model("models:/ftops-<task_type>@champion")`).
   Checkpoints go to `storage.checkpoints` (default `FTOPS_HOME/checkpoints`): a retry after a crash or a
   killed worker continues the same MLflow run from the newest checkpoint. bf16 on a GPU that supports it;
   out of memory and a NaN loss fail at once (no retry) with the step and what to lower. With the
   `openai` backend it estimates the cost (refused above `max_cost_usd`), uploads the split and creates a
   fine-tuning job on the API of the `openai_default` connection (key = password, base URL = host), with the
   run id as the job's idempotency key. `wait_for_model` then defers to the triggerer (no worker slot held
   while the job trains): the trigger polls the job with the async client every `poll_seconds` and streams its
   events into the task log; once the job is over the task resumes, records status, events and the model id on
   the MLflow run, and fails with the API's message if the job failed or was cancelled, or cancels it when it
   runs past `timeout_hours` from its creation (both in `training.backend` of the config). With the
   `huggingface` backend it passes the trained model straight on.
3. `evaluate_candidate` scores candidate and baseline (the `champion` alias, or the base model when there is
   none) on the same yardstick: the task type's latest frozen eval set (`ftops evalset import`), else the
   dataset's test split without the rows whose reference the champion itself served. Accuracy, perplexity,
   BLEU, ROUGE-L, latency, cost; then the deployment gate (accuracy gain and its confidence bound, an absolute
   accuracy floor, perplexity, latency, cost). A fine-tune started for an error pattern is also measured on
   that failure cluster (fixed rate of both; `gate.require_slice_improvement` makes it a criterion). A task
   type with `metric: judge` (`evaluation.metrics`) is judged pairwise by the LLM judge of the
   `evaluation.judge.conn_id` connection, in both answer orders, and only if its calibration
   (`ftops judge calibrate`) reaches `min_kappa`. Against an upstream champion (`ftops register-upstream`) the
   replacement gate applies instead: not worse within `gate.replace_margin`, at least `gate.min_saving` cheaper
   per 1 000 calls, p95 latency under `gate.max_latency_p95_ms`; the champion is asked through its connection.
4. `register_candidate` makes the run a version of `ftops-<task_type>` tagged with the dataset version,
   content hash, base model, backend, metrics, decision and reasons.
5. `choose_path` branches: `deploy_canary` (the first passing model of a task type becomes `champion`
   directly; later ones become `canary` with `traffic_percent`) or `archive` (reasons tagged, aliases untouched).

Training runs in the one-slot `ftops_training` pool; `deploy_canary` in the one-slot `ftops_aliases` pool, with
every other task that moves registry aliases (`ftops_canary`, `ftops_rollback`).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from ftops_airflow.common import (
    ALIASES_POOL,
    DEFAULT_ARGS,
    START_DATE,
    TAGS,
    TASK_TYPE,
    TRAINING_POOL,
    openai_client,
    resolve_config,
    snapshot,
    training_queue,
    warehouse_engine,
)
from ftops_airflow.openai_wait import WaitForFineTuneOperator

# Trigger-form sections. Airflow 3.3's form cannot show a field only for one choice of another (no conditional
# display in Param), so each backend's fields get their own section and a field of the other backend is refused.
WHAT, BOTH, GOVERNOR = "What to train", "Training (both backends)", "Set by the governor (leave empty by hand)"
HF, OPENAI = "Hugging Face backend", "OpenAI backend"


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    # evaluating a trained candidate goes before training the next run's (they share the training pool)
    default_args={**DEFAULT_ARGS, "weight_rule": "upstream", **training_queue()},
    tags=TAGS["training"],
    doc_md=__doc__,
    params={
        "task_type": Param("sentiment", type="string", **TASK_TYPE, minLength=1, title="Task type",
                           description="Which task type's model to fine-tune.", section=WHAT),
        "dataset_version": Param(None, type=["null", "string"], title="Dataset version",
                                 description="e.g. v3 or dataset/sentiment/v3. Empty = the latest version.",
                                 section=WHAT),
        "backend": Param(None, type=["null", "string"], enum=[None, "huggingface", "openai"], title="Backend",
                         values_display={"huggingface": "Hugging Face (local, Transformers + PEFT)",
                                         "openai": "OpenAI-compatible fine-tuning API"},
                         description="Empty = config (huggingface). Fill in only the section of this backend: "
                         "a field of the other one is refused.", section=WHAT),
        "base_model": Param(None, type=["null", "string"], title="Base model",
                            description="Local path, hub id, local:tiny-gpt2, or an API model id. Empty = config.",
                            section=WHAT),
        "reason": Param(None, type=["null", "string"], title="Reason",
                        description="Why this run; recorded on the model version.", section=WHAT),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100, title="Epochs",
                        description="Passes over the training split (n_epochs on the openai backend). Empty = config.",
                        section=BOTH),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=1024, title="Batch size",
                            description="Empty = config.", section=BOTH),
        "method": Param(None, type=["null", "string"], enum=[None, "lora", "full"], title="Method",
                        values_display={"lora": "LoRA (a PEFT adapter)", "full": "Full (every weight)"},
                        description="huggingface backend only: lora (a PEFT adapter) or full (every weight). "
                        "Empty = config (full for the tiny local model).", section=HF),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                               title="Learning rate", description="huggingface backend only. Empty = config.",
                               section=HF),
        "lora_r": Param(None, type=["null", "integer"], minimum=1, maximum=256, title="LoRA rank",
                        description="huggingface backend, method lora. Empty = config.", section=HF),
        "lora_alpha": Param(None, type=["null", "integer"], minimum=1, title="LoRA alpha",
                            description="huggingface backend, method lora: the update is scaled by alpha / rank. "
                            "Empty = config.", section=HF),
        "max_seq_len": Param(None, type=["null", "integer"], minimum=16, title="Max sequence length",
                             description="huggingface backend: tokens per example after the chat template; longer "
                             "ones are cut. Empty = config.", section=HF),
        "precision": Param(None, type=["null", "string"], enum=[None, "auto", "bf16", "fp32"], title="Precision",
                           values_display={"auto": "auto (bf16 where the GPU supports it)", "bf16": "bf16",
                                           "fp32": "fp32"},
                           description="huggingface backend: auto = bf16 on a GPU that supports it, else fp32. "
                           "Empty = config.", section=HF),
        "objective": Param(None, type=["null", "string"], enum=[None, "sft", "dpo", "sft_then_dpo"], title="Objective",
                           values_display={"sft": "SFT (imitate the train split)",
                                           "dpo": "DPO (prefer corrected answers over served ones)",
                                           "sft_then_dpo": "SFT, then DPO from the SFT model"},
                           description="huggingface backend: dpo trains on the dataset version's preference pairs "
                           "(fails without any); sft_then_dpo falls back to SFT without them. Empty = config (sft).",
                           section=HF),
        "dpo_beta": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10, title="DPO beta",
                          description="huggingface backend, objective dpo or sft_then_dpo: higher keeps the model "
                          "closer to where DPO started. Empty = config (0.1).", section=HF),
        "learning_rate_multiplier": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10,
                                          title="Learning rate multiplier",
                                          description="openai backend only: the API's learning_rate_multiplier. "
                                          "Empty = config (0.1).", section=OPENAI),
        "policy": Param(None, type=["null", "string"], title="Policy (set by the governor)",
                        description="The governor policy that started this run; recorded on the model version.",
                        section=GOVERNOR),
        "decision_key": Param(None, type=["null", "string"], title="Decision (set by the governor)",
                              description="The ftops_decisions row that started this run; recorded on the model "
                              "version, so `ftops mcp` explain_model can trace it.", section=GOVERNOR),
    },
)
def ftops_finetune():
    @task
    def resolve_run_config(params: dict | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from ftops.core.config import load_config
        from ftops.pipeline.finetune import ErasedDatasetError, check_training_request
        from ftops.training.data import TrainingError
        from ftops.training.params import training_overrides

        config = resolve_config(training_overrides(load_config(), params["backend"], params))
        try:
            check_training_request(snapshot(config), params["task_type"], params["dataset_version"])
        except (ErasedDatasetError, TrainingError) as exc:  # a retry cannot change it (e.g. dpo without pairs)
            raise AirflowFailException(str(exc)) from exc
        return config

    @task(pool=TRAINING_POOL)
    def train_candidate(config: dict, params: dict | None = None) -> dict:
        cfg, task_type = snapshot(config), params["task_type"]
        run_key = f"{get_current_context()['run_id']}/{task_type}"
        if cfg.training.backend.kind == "openai":  # submits the job and returns; wait_for_model waits
            from ftops.pipeline.finetune_api import submit_candidate

            client = openai_client(cfg.training.backend.conn_id)
            return submit_candidate(client, cfg, task_type, params["dataset_version"], run_key=run_key)
        from ftops.pipeline.finetune import train_candidate as train

        return train(cfg, task_type, params["dataset_version"], run_key=run_key,
                     engine=warehouse_engine(cfg.warehouse_conn_id), decision_key=params["decision_key"])

    @task(pool=TRAINING_POOL)
    def evaluate_candidate(config: dict, trained: dict, params: dict | None = None) -> dict:
        from ftops.pipeline.finetune_eval import evaluate_candidate as evaluate

        cfg = snapshot(config)
        conn_id = getattr(cfg.training.backend, "conn_id", "openai_default")
        return evaluate(cfg, params["task_type"], trained["run_id"], api_client=lambda: openai_client(conn_id),
                        connect=openai_client,  # an upstream champion's connection (the replacement gate)
                        judge_client=lambda: openai_client(cfg.evaluation.judge.conn_id),
                        engine=warehouse_engine(cfg.warehouse_conn_id), decision_key=params["decision_key"])

    @task
    def register_candidate(trained: dict, evaluation: dict, params: dict | None = None) -> dict:
        from ftops.pipeline.finetune import register_candidate as register
        from ftops.registry import models as registry

        version = register(params["task_type"], trained["run_id"], evaluation)
        why = {"trigger_reason": params["reason"], "ftops.policy": params["policy"],
               "ftops.decision_key": params["decision_key"]}  # fmt: skip
        registry.set_tags(params["task_type"], version, {k: v for k, v in why.items() if v})
        return {"version": version, **evaluation["gate"]}

    @task.branch
    def choose_path(registered: dict) -> str:
        return "deploy_canary" if registered["passed"] else "archive"

    @task(pool=ALIASES_POOL)
    def deploy_canary(config: dict, registered: dict, params: dict | None = None) -> dict:
        from ftops.pipeline.finetune import deploy_candidate

        return deploy_candidate(snapshot(config), params["task_type"], registered["version"])

    @task
    def archive(registered: dict, params: dict | None = None) -> dict:
        from ftops.pipeline.finetune import archive_candidate

        return archive_candidate(params["task_type"], registered["version"], registered["reasons"])

    # How the run ended, for the governor's retry guard: a success once a branch is done, a failure as soon as
    # any task failed (so a dataset whose fine-tune keeps failing is retried up to a limit, then reported).
    @task(trigger_rule="none_failed_min_one_success")
    def record_success(registered: dict, params: dict | None = None) -> None:
        _record_outcome(params, "succeeded", registered["version"])

    @task(trigger_rule="one_failed")
    def record_failure(params: dict | None = None) -> None:
        _record_outcome(params, "failed", None)

    config = resolve_run_config()
    submitted = train_candidate(config)
    trained = WaitForFineTuneOperator(task_id="wait_for_model", config=config, trained=submitted).output
    evaluated = evaluate_candidate(config, trained)
    registered = register_candidate(trained, evaluated)
    branches = [deploy_canary(config, registered), archive(registered)]
    choose_path(registered) >> branches
    branches >> record_success(registered)
    [config, submitted, trained, evaluated, registered, *branches] >> record_failure()  # a direct downstream of every task


def _record_outcome(params: dict | None, status: str, model_version: str | None) -> None:
    from ftops.warehouse.state import record_training_outcome

    assert params is not None
    cfg = snapshot(resolve_config({}))
    record_training_outcome(warehouse_engine(cfg.warehouse_conn_id), get_current_context()["run_id"],
                            params["task_type"], dataset_version=params["dataset_version"], status=status,
                            model_version=model_version)  # fmt: skip


ftops_finetune()
