"""One function per pipeline step: what each Airflow task calls.

Each takes the validated config snapshot and small values (task type, versions, run ids), reads its inputs
from durable shared stores (warehouse, DVC remote, MLflow) and returns a small JSON-able dict, so the same
steps run on workers that share no disk. Each is safe to retry: see the notes on every function.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig, HuggingFaceBackend
from ftops.core.names import check_task_type, contained_path, key_digest
from ftops.datasets.versions import DatasetRegistry, DatasetVersion
from ftops.deployment import rollout
from ftops.pipeline.common import check_base_model, dataset_registry
from ftops.pipeline.yardstick import evalset_figure_tag, yardstick_tags
from ftops.registry import models as registry

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ftops.training.hf import TrainResult


log = logging.getLogger(__name__)


# -- fine-tuning ----------------------------------------------------------------------------------------
def _hf_backend(cfg: FtopsConfig) -> HuggingFaceBackend:
    backend = cfg.training.backend
    if not isinstance(backend, HuggingFaceBackend):
        raise ValueError(
            "train_candidate trains with the huggingface backend; the openai backend submits a job through "
            "ftops.pipeline.finetune_api.submit_candidate"
        )
    return backend


def use_threads(cfg: FtopsConfig) -> None:
    """Limit torch to ``training.backend.threads`` CPU threads in this process (training and evaluation tasks)."""
    threads = getattr(cfg.training.backend, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
        log.info("torch uses %d CPU thread(s) (training.backend.threads)", threads)


def check_training_request(cfg: FtopsConfig, task_type: str, dataset: str | None) -> str:
    """Fail before any work when the backend, dataset version or base model cannot be used.

    Returns:
        The dataset version's tag.
    """
    backend = cfg.training.backend
    if isinstance(backend, HuggingFaceBackend):
        check_base_model(backend.base_model)
    else:
        from ftops.training.openai_cost import price_per_1m

        price_per_1m(backend.base_model, backend.price_per_1m_training_tokens)  # no price: no budget check
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, dataset)
    refuse_pre_erasure(datasets, version)
    if isinstance(backend, HuggingFaceBackend) and backend.objective == "dpo":  # no pairs: fail before any work
        from ftops.training.preference import resolve_objective

        resolve_objective(backend.objective, len(datasets.read_preference(version)), backend.dpo.min_pairs, version.tag)
    return version.tag


class ErasedDatasetError(ValueError):
    """The dataset version predates an erasure: a later version is an erasure's successor (fail, never retry)."""


def refuse_pre_erasure(datasets: DatasetRegistry, version: DatasetVersion) -> None:
    """Refuse a dataset version that an erasure has superseded.

    A version is refused when any later version of its task type was published by an erasure (its metadata
    has ``erasure``): the older version may hold the erased user's examples, and training on it would bring
    them back. Conservative: an erasure of a user the version never held blocks it too; train on the
    successor or a later version.

    Raises:
        ErasedDatasetError: A later version is an erasure's successor.
    """
    for later in (v for v in datasets.versions(version.task_type) if v.version > version.version):
        erasure = datasets.read_metadata(later).get("erasure")
        if erasure:
            raise ErasedDatasetError(
                f"{version.tag} predates the erasure successor {later.tag} (request "
                f"{erasure.get('request_key', '?')}): it may hold erased users' examples; train on {later.tag} or a "
                "later version"
            )


def checkpoint_dir(cfg: FtopsConfig, task_type: str, run_key: str) -> Path:
    """The durable checkpoint folder of one training run key (a retry finds it again).

    Raises:
        InvalidNameError: The task type is not a valid name (the folder could leave the checkpoint root).
    """
    return contained_path(cfg.storage.checkpoint_root(), check_task_type(task_type), key_digest(run_key))


def train_candidate(
    cfg: FtopsConfig, task_type: str, dataset: str | None, *, run_key: str, engine: sa.Engine | None = None,
    decision_key: str | None = None,
) -> dict[str, Any]:
    """Fine-tune a candidate on a dataset version and log it as an MLflow run.

    ``objective`` (``training.backend.objective``) picks SFT on the train split (each row repeated by its
    target's source weight, ``training.source_weights``), DPO on the version's preference pairs from the base
    model, or SFT then DPO from the SFT model (SFT alone when the version has no pairs); the run and the model
    version are tagged with the objective that ran, and DPO adds metrics ``dpo_reward_margin``,
    ``dpo_reward_accuracy``, ``dpo_first_loss``, ``dpo_final_loss``, ``dpo_pairs``, ``dpo_steps`` (and
    ``dpo_loss``/``dpo_reward_margin`` by step). The weights are logged as SFT's are, so the candidate is
    evaluated, registered and gated the same way.

    The run gets params (with ``train_examples`` and ``validation_examples`` after the validation split, and
    ``validation`` saying why there is none), the dataset input, progress metrics as training goes
    (``train_loss``, ``tokens_per_s``, ``eta_s``, ``learning_rate``, ``max_steps`` by step: ``ftops status``
    shows progress and ETA from them), ``eval_loss`` once per epoch, the kept checkpoint (tags
    ``best_checkpoint``, ``best_epoch``; metrics ``best_eval_loss``, ``final_eval_loss``), the weights
    (``adapter/`` or ``full_model/``) and
    the model in MLflow's ``transformers`` flavour (``model/``, loadable with ``mlflow.transformers.load_model``).

    Retry-safe: a finished run with the same run key is returned instead of training again; an unfinished
    one (the worker crashed or was killed) is continued, and training resumes from the newest checkpoint in
    :func:`checkpoint_dir`. Checkpoints are deleted once the run has its model. (The DPO phase keeps no
    checkpoint: a retry trains it again.)

    A fine-tune the governor started for an error pattern (``decision_key`` of its decision, ``engine`` the
    warehouse) trains the failure cluster's rows more often: at least ``training.cluster_share`` of the SFT rows
    (:func:`ftops.training.data.oversample_cluster`; param ``cluster_train_rows``).
    """
    import mlflow

    from ftops.training.data import split_validation
    from ftops.training.hf import Evaluation, Progress, fine_tune, remove_checkpoints
    from ftops.training.preference import DpoProgress, resolve_objective, train_preference

    backend = _hf_backend(cfg)
    use_threads(cfg)
    base_model = check_base_model(backend.base_model)
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, dataset)
    refuse_pre_erasure(datasets, version)
    existing = registry.find_run(task_type, run_key)
    if existing:
        log.info("Run key %s already trained as MLflow run %s: reusing it", run_key, existing)
        return {"run_id": existing, "dataset_version": version.tag}
    pairs = datasets.read_preference(version) if backend.objective != "sft" else []
    objective = resolve_objective(backend.objective, len(pairs), backend.dpo.min_pairs, version.tag)
    train: list[Mapping[str, Any]] = list(datasets.read(version, "train")) if objective != "dpo" else []
    if objective != "dpo" and len(train) < cfg.training.min_train_examples:
        raise ValueError(f"{version.tag} has only {len(train)} training examples "
                         f"(training.min_train_examples is {cfg.training.min_train_examples})")  # fmt: skip
    cluster_rows = 0
    if train:
        train, cluster_rows = sft_rows(cfg, train, datasets.read_metadata(version), engine, decision_key)

    def log_progress(p: Progress) -> None:
        mlflow.log_metrics({"train_loss": p.loss, "tokens_per_s": p.tokens_per_s, "eta_s": p.eta_s,
                            "learning_rate": p.learning_rate, "epoch": p.epoch, "max_steps": p.max_steps},
                           step=p.step)  # fmt: skip

    def log_evaluation(e: Evaluation) -> None:
        mlflow.log_metrics({"eval_loss": e.eval_loss, "eval_epoch": e.epoch}, step=e.step)

    def log_dpo(p: DpoProgress) -> None:
        mlflow.log_metrics({"dpo_loss": p.loss, "dpo_reward_margin": p.reward_margin,
                            "dpo_reward_accuracy": p.reward_accuracy, "eta_s": p.eta_s}, step=p.step)  # fmt: skip

    checkpoints = checkpoint_dir(cfg, task_type, run_key)
    weights = "adapter" if backend.method == "lora" else "full_model"
    lineage = {"backend": backend.kind, "base_model": backend.base_model, "ftops.weights": weights,
               "objective": objective}  # fmt: skip
    split = split_validation(train, backend.validation_share)  # from the train split only: test is the gate's
    params = backend.model_dump(mode="json") | {"train_examples": len(split.train), "preference_pairs": len(pairs),
                                                "validation_examples": len(split.validation), "cluster_train_rows": cluster_rows}  # fmt: skip
    params["dpo"] = json.dumps(params["dpo"], sort_keys=True)
    if split.note and objective != "dpo":
        params["validation"] = f"off: {split.note}"
    with tempfile.TemporaryDirectory() as tmp, candidate_run(
        task_type, run_key, version, datasets.url, run_name=f"{task_type}-{version.tag.rsplit('/', 1)[-1]}",
        tags=lineage, params=params,
    ) as (run, _):
        output, final_loss = None, math.nan
        if objective != "dpo":
            result = fine_tune(base_model, split.train, Path(tmp) / "sft", backend, validation_rows=split.validation,
                               checkpoint_dir=checkpoints, on_progress=log_progress, on_evaluate=log_evaluation)  # fmt: skip
            mlflow.log_metrics({
                "train_first_loss": result.first_loss, "train_final_loss": result.final_loss,
                "train_seconds": result.seconds, "train_tokens": result.train_tokens, "train_steps": result.steps,
                "train_resumed_from_step": result.resumed_from_step,
            })  # fmt: skip
            mlflow.set_tags({"padding_free": str(result.padding_free), "precision": result.precision})
            if result.best_checkpoint:
                _log_best(result)
            output, final_loss = result.output_dir, result.final_loss
        if objective != "sft":
            dpo = train_preference(base_model, pairs, Path(tmp) / "dpo", backend, start_from=output,
                                   on_progress=log_dpo)  # fmt: skip
            mlflow.log_metrics({"dpo_first_loss": dpo.first_loss, "dpo_final_loss": dpo.final_loss,
                                "dpo_reward_margin": dpo.reward_margin, "dpo_reward_accuracy": dpo.reward_accuracy,
                                "dpo_pairs": dpo.pairs, "dpo_steps": dpo.steps, "dpo_seconds": dpo.seconds})  # fmt: skip
            output, final_loss = dpo.output_dir, dpo.final_loss
        assert output is not None  # one phase at least ran
        mlflow.log_artifacts(str(output), weights)
        mlflow.set_tag("ftops.model_id", _log_transformers_model(base_model, output, backend.method))
    remove_checkpoints(checkpoints)
    return {"run_id": run.info.run_id, "dataset_version": version.tag, "final_loss": final_loss,
            "objective": objective}  # fmt: skip


def sft_rows(
    cfg: FtopsConfig, train: list[Mapping[str, Any]], metadata: Mapping[str, Any], engine: sa.Engine | None,
    decision_key: str | None,
) -> tuple[list[Mapping[str, Any]], int]:
    """A run's SFT rows: the train split with its failure cluster's rows repeated to ``training.cluster_share``
    (a fine-tune the governor started for an error pattern), then every row repeated by its target's source weight.

    Returns:
        (rows, how many distinct rows of the failure cluster the train split holds).
    """
    from ftops.pipeline.slices import triggering_pattern
    from ftops.training.data import oversample_cluster, repeat_by_source

    sources = (metadata.get("sources") or {}).get("train")
    pattern = triggering_pattern(engine, decision_key) if engine is not None and decision_key else None
    cluster_rows = 0
    if pattern is not None:
        train, sources, cluster_rows = oversample_cluster(train, sources, (metadata.get("lineage") or {}).get("train"),
                                                          pattern.row_ids, cfg.training.cluster_share)  # fmt: skip
    return repeat_by_source(train, sources, cfg.training.source_weights), cluster_rows


def _log_best(result: TrainResult) -> None:
    """Tag the kept checkpoint and its epoch; log its validation loss and the saved model's."""
    import mlflow

    mlflow.set_tags({"best_checkpoint": str(result.best_checkpoint), "best_epoch": f"{result.best_epoch:g}",
                     "stopped_early": str(result.stopped_early)})  # fmt: skip
    mlflow.log_metrics({"best_eval_loss": result.best_eval_loss, "final_eval_loss": result.final_eval_loss})


def _log_transformers_model(base_model: str, weights_dir: Path, method: str) -> str:
    """Log the model in MLflow's ``transformers`` flavour (``text-generation``) and return its model id.

    A LoRA adapter on a hub base model is logged as the adapter plus a reference to the hub model (MLflow's
    PEFT support; not exercised here, where no hub is reachable). On a local base model (a path, which
    another machine may not have) the adapter is merged into the base and the merged model is logged whole,
    so ``mlflow.transformers.load_model`` works anywhere: MLflow would otherwise save the PEFT wrapper's weights under names the base model does not
    load (measured: every weight re-initialised). A full fine-tune is logged whole.
    """
    from importlib.metadata import version

    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(weights_dir))
    model: Any
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(str(weights_dir))
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), str(weights_dir))
        if Path(base_model).exists():
            model = model.merge_and_unload()
    # Pinned from what is installed; MLflow's own inference also asks for torchvision, which we do not use.
    requirements = [f"{pkg}=={version(pkg)}" for pkg in ("transformers", "torch", "peft", "accelerate")]
    info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="model",
                                         task="text-generation", pip_requirements=requirements)  # fmt: skip
    return str(info.model_id)


def _log_dataset_input(version: DatasetVersion, repo: str) -> None:
    """Lineage: the dataset version as an MLflow dataset input (source = the registry's git remote at the tag)."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = HTTPDatasetSource(url=f"{repo}@{version.tag}")
    dataset = MetaDataset(source=source, name=version.tag, digest=version.content_hash[:32])  # type: ignore[abstract]
    mlflow.log_input(dataset, context="training")


@contextmanager
def candidate_run(
    task_type: str, run_key: str, version: DatasetVersion, repo: str, *, run_name: str, tags: dict[str, str],
    params: dict[str, Any],
) -> Iterator[tuple[Any, bool]]:
    """The MLflow run of one training run key, as ``(active run, resumed)``.

    A new run gets the lineage: run key, dataset version, content hash and repository (``repo``: the dataset
    registry's git remote URL, where any worker finds the version), task type, ``tags`` (backend,
    base model...), ``params`` and the dataset version as an input. The unfinished run a crashed or killed
    attempt left is continued as it is, so a run key has one run however many attempts it takes.
    """
    import mlflow

    resumed = registry.unfinished_run(task_type, run_key)
    if resumed:
        log.info("Continuing MLflow run %s of run key %s", resumed, run_key)
    context = mlflow.start_run(run_id=resumed) if resumed else mlflow.start_run(
        experiment_id=registry.experiment_id(task_type), run_name=run_name
    )  # fmt: skip
    with context as run:
        if not resumed:
            mlflow.set_tags({**registry.run_key_tags(run_key), "dataset_version": version.tag,
                             "content_hash": version.content_hash, "dataset_repo": repo, "task_type": task_type,
                             **tags})  # fmt: skip
            mlflow.log_params(params)
            _log_dataset_input(version, repo)
        yield run, resumed is not None


def register_candidate(task_type: str, run_id: str, evaluation: dict[str, Any]) -> str:
    """Register the candidate with lineage and its gate decision. Retry-safe: once per run."""
    c = registry.client()
    run = c.get_run(run_id)
    gate = evaluation["gate"]
    tags: dict[str, Any] = {
        "dataset_version": run.data.tags["dataset_version"],
        "content_hash": run.data.tags["content_hash"],
        "backend": run.data.tags["backend"],
        "base_model": run.data.tags["base_model"],
        "objective": run.data.tags.get("objective", "sft"),  # runs from before DPO trained with SFT
        "baseline": evaluation["baseline"],
        "decision": gate["decision"],
        "reason": "; ".join(gate["reasons"]),
    }
    if "dataset_repo" in run.data.tags:  # runs from before the git remote have none
        tags["dataset_repo"] = run.data.tags["dataset_repo"]
    tags |= {f"metric.{k}": round(float(v), 4) for k, v in evaluation["candidate_metrics"].items() if v is not None}
    tags |= {f"baseline.{k}": round(float(v), 4) for k, v in evaluation["baseline_metrics"].items() if v is not None}
    for trivial in evaluation.get("trivial_baselines") or []:  # beside the baseline: what a constant answer scores
        tags |= {"trivial_baseline": f"{trivial['name']}: {trivial['answer'][:200]}",
                 "trivial.accuracy": round(float(trivial["accuracy"]), 4)}  # fmt: skip
    tags |= yardstick_tags(evaluation)
    tags |= evaluation.get("slice") or {}  # the failure slice: pattern id, sizes, fixed rates
    tags |= (evaluation.get("judge") or {}).get("tags") or {}
    model_id = run.data.tags.get("ftops.model_id")  # the transformers-flavour model (HF backend)
    source = f"models:/{model_id}" if model_id else f"{run.info.artifact_uri}/model"  # API: the model id's pointer
    version = registry.register(task_type, run_id, source, tags, model_id=model_id)
    yardstick, champion = evaluation.get("yardstick") or {}, evaluation.get("champion_version")
    if yardstick.get("version") is not None and champion is not None:  # the champion's figure, like for like
        registry.set_tags(task_type, champion, {evalset_figure_tag(yardstick["version"]):
                                                round(float(yardstick["accuracy_baseline"]), 4)})  # fmt: skip
    return version


def deploy_candidate(cfg: FtopsConfig, task_type: str, version: str) -> dict[str, Any]:
    """Champion if the task type has none, else canary at the configured traffic share. Idempotent."""
    role = rollout.deploy(task_type, version, cfg.canary.traffic_percent)  # tags deployed_at once (not on a retry)
    log.info("%s version %s deployed as %s", registry.model_name(task_type), version, role)
    return {"task_type": task_type, "version": version, "role": role}


def archive_candidate(task_type: str, version: str, reasons: list[str]) -> dict[str, Any]:
    """Mark a failed candidate archived with its reasons; aliases are untouched. Idempotent."""
    registry.set_tags(task_type, version, {"deployment": "archived", "archive_reason": "; ".join(reasons)})
    log.info("%s version %s archived: %s", registry.model_name(task_type), version, "; ".join(reasons))
    return {"task_type": task_type, "version": version, "role": "archived"}
