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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops import registry
from ftops.config import FtopsConfig, HuggingFaceBackend, resolve_base_model
from ftops.curation import examples_of
from ftops.datasets import DatasetRegistry, DatasetVersion

if TYPE_CHECKING:
    from collections.abc import Callable

    import sqlalchemy as sa

    from ftops.embedding import Embedder
    from ftops.evaluation import EvalResult, LoadedModel

log = logging.getLogger(__name__)


def dataset_registry(cfg: FtopsConfig) -> DatasetRegistry:
    repo, remote, _ = cfg.storage.resolved()
    return DatasetRegistry(repo, remote)


def served_model_version(task_type: str, version: str) -> str:
    """The ``model_version`` string the router logs for a registered version."""
    return f"{registry.model_name(task_type)}/{version}"


# -- curation -------------------------------------------------------------------------------------------
def curate_task_type(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_type: str,
    *,
    run_key: str,
    since: datetime | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Read one task type's new logs, curate them with the earlier runs' candidates, validate and version.

    The run reads the window from ``since`` (default: the watermark, where the last completed run stopped)
    to the run's first attempt; a retry or re-run of the same run key reads the same window. Order of
    writes, each idempotent: quarantine (replaced per run key) → dataset version (same content ⇒ same
    version) → curated pool (replaced per row id) → the window marked done, which moves the watermark.
    A crash anywhere leaves the watermark where it was, so the next attempt reads the same rows again.

    Returns:
        ``status`` (``versioned``, ``unchanged``, ``no_new_rows``, ``insufficient``, ``dry_run``) with the
        version, counts, window and content hash.

    Raises:
        LookupError: The log table or a required column is missing.
        ValidationFailedError: A Great Expectations suite failed (the message names it and the Data Docs).
        WarehouseUnavailableError: The warehouse cannot be reached.
    """
    from ftops.config import ftops_home
    from ftops.curation import curate_frame, summarise_accounting
    from ftops.embedding import EmbeddingCache, SentenceEmbedder
    from ftops.validation import require, validate_curated, validate_raw
    from ftops.warehouse import (
        curation_window,
        ensure_state_tables,
        finish_curation_run,
        read_interactions,
        read_pool,
        upsert_pool,
        write_quarantine,
    )

    started = time.perf_counter()
    table = cfg.interactions_table
    ensure_state_tables(engine, table)
    now = now or datetime.now(UTC)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a trigger form's time without an offset means UTC
    window_since, until = curation_window(engine, run_key, task_type, now=now, since=since, table=table)
    # stamped later than this attempt (beyond clock skew): quarantined, not left for a window that never comes
    future_after = max(now, until) + timedelta(minutes=cfg.curation.future_tolerance_minutes)
    frame = read_interactions(engine, task_type, table=table, since=window_since, until=until,
                              future_after=future_after)  # fmt: skip
    window = {"since": window_since.isoformat() if window_since else None, "until": until.isoformat()}
    read_s = time.perf_counter() - started
    log.info("Read %d %s rows from %s to %s (%.1f s)", len(frame), task_type, window["since"] or "the start",
             window["until"], read_s)  # fmt: skip
    base: dict[str, Any] = {"task_type": task_type, "rows_read": len(frame), "window": window}

    def finish(status: str, version: str | None = None, **extra: Any) -> dict[str, Any]:
        summary = {**base, **extra, "status": status, "dataset_version": version}
        if not dry_run:
            finish_curation_run(engine, run_key, task_type, dataset_version=version, summary=summary, table=table)
        log.info("%s: %s in %.1f s", task_type, status, time.perf_counter() - started)
        return summary

    if frame.empty:
        return finish("no_new_rows")
    _, _, cache_path = cfg.storage.resolved()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    docs_dir = ftops_home() / "data_docs"
    embedder = embedder or SentenceEmbedder(cfg.curation.embedding_model, batch_size=cfg.curation.embedding_batch_size)
    curated = curate_frame(frame, cfg.curation, embedder, EmbeddingCache(cache_path),
                           earlier=read_pool(engine, task_type, table), future_after=future_after)  # fmt: skip
    if not curated.balanced():
        raise RuntimeError(f"accounting does not add up: {dict(curated.accounting)} vs {curated.rows_read} read")
    if not dry_run:
        write_quarantine(engine, run_key, curated.quarantined, table)
    timings = {"read": round(read_s, 3), **curated.timings}
    clock = time.perf_counter()
    raw_report = validate_raw(frame, curated.reasons, task_type, cfg.curation, docs_dir)
    timings["validate_raw"] = round(time.perf_counter() - clock, 3)
    require(raw_report)
    accounting = summarise_accounting(curated.accounting)
    base |= {
        "accounting": accounting,
        "accepted": accounting.get("accepted", 0),
        "scrubbed": dict(sorted(curated.scrubbed.items())),
        "capped": {"users": len(curated.capped_users), "rows": sum(curated.capped_users.values())},
        "burst_users": curated.burst_users,
        "embedded_new": curated.embedded_new,
        "pool_size": curated.pool_size,
        "from_earlier_runs": curated.from_earlier_runs,
        "train_rows": len(curated.train),
        "test_rows": len(curated.test),
        "diversity_score": round(curated.diversity_score, 4),
        "max_cross_split_similarity": round(curated.max_cross_split_similarity, 4),
        "max_user_share": round(curated.max_user_share, 4),
        "timings_s": timings,
    }
    size = len(curated.train) + len(curated.test)
    if size < cfg.curation.min_examples:
        log.warning("%s: %d examples, fewer than min_examples=%d: no version yet; the candidates are kept for "
                    "the next run", task_type, size, cfg.curation.min_examples)  # fmt: skip
        if not dry_run:
            upsert_pool(engine, [{**c, "run_key": run_key} for c in curated.candidates], table)
        return finish("dry_run" if dry_run else "insufficient")
    clock = time.perf_counter()
    curated_report = validate_curated(curated.train, curated.test, cfg.curation, task_type,
                                      max_cross_split_similarity=curated.max_cross_split_similarity,
                                      docs_dir=docs_dir)  # fmt: skip
    timings["validate_curated"] = round(time.perf_counter() - clock, 3)
    require(curated_report)
    if dry_run:
        return finish("dry_run")
    metadata = {
        **base,
        "run_key": run_key,
        "validation": {"raw": raw_report.as_dict(), "curated": curated_report.as_dict()},
        "config": cfg.curation.model_dump(mode="json"),
    }
    clock = time.perf_counter()
    version = dataset_registry(cfg).publish(task_type, curated.train, curated.test, metadata)
    timings["version"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    upsert_pool(engine, [{**c, "run_key": run_key} for c in curated.candidates], table)
    timings["pool"] = round(time.perf_counter() - clock, 3)
    log.info("%s: time per phase (s): %s", task_type, ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    return finish("versioned" if version.created else "unchanged", version.tag, content_hash=version.content_hash)


# -- governance -----------------------------------------------------------------------------------------
def govern(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_types: list[str],
    *,
    run_key: str,
    force: bool = False,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """Decide for each task type whether to train; record every decision in the warehouse.

    Retry-safe: decisions are keyed by run key and task type.
    """
    from ftops.policy import decide
    from ftops.warehouse import ensure_schema, read_decisions, record_decision

    ensure_schema(engine, cfg.interactions_table)
    datasets = dataset_registry(cfg)
    decisions = []
    for task_type in task_types or datasets.task_types():
        # A dataset already sent to training by an earlier run counts as trained: several curate events in
        # a row must not start several fine-tunes of the same data.
        sent = {d["dataset_version"] for d in read_decisions(engine, task_type) if d["train"] and d["dataset_version"]}
        latest = datasets.latest(task_type)
        rows = 0
        if latest is not None:
            meta = datasets.read_metadata(latest)
            rows = int(meta["train_rows"]) + int(meta["test_rows"])
        decision = decide(
            task_type,
            latest_dataset=latest.tag if latest else None,
            dataset_rows=rows,
            trained_datasets=registry.trained_dataset_versions(task_type) | sent,
            cfg=cfg.governor,
            force=force,
            requested_reason=reason,
        )
        log.info("%s: %s (%s)", task_type, "TRAIN" if decision.train else "wait", decision.reason)
        record_decision(engine, {**decision.as_dict(), "decision_key": f"{run_key}/{task_type}",
                                 "decided_at": datetime.now(UTC)})  # fmt: skip
        decisions.append(decision.as_dict())
    return decisions


# -- fine-tuning ----------------------------------------------------------------------------------------
def _hf_backend(cfg: FtopsConfig) -> HuggingFaceBackend:
    backend = cfg.training.backend
    if not isinstance(backend, HuggingFaceBackend):
        raise ValueError(
            "train_candidate trains with the huggingface backend; the openai backend submits a job through "
            "ftops.api_training.submit_candidate"
        )
    return backend


def _check_base_model(name: str) -> str:
    path = resolve_base_model(name)
    if name.startswith("local:") and not Path(path).is_dir():
        raise FileNotFoundError(f"base model {name!r} is not built at {path}: run `ftops build-base-model`")
    if path.startswith(("/", ".")) and not Path(path).is_dir():
        raise FileNotFoundError(f"base model path {path} does not exist")
    return path


def check_training_request(cfg: FtopsConfig, task_type: str, dataset: str | None) -> str:
    """Fail before any work when the backend, dataset version or base model cannot be used.

    Returns:
        The dataset version's tag.
    """
    backend = cfg.training.backend
    if isinstance(backend, HuggingFaceBackend):
        _check_base_model(backend.base_model)
    else:
        from ftops.openai_ft import price_per_1m

        price_per_1m(backend.base_model, backend.price_per_1m_training_tokens)  # no price: no budget check
    return dataset_registry(cfg).get(task_type, dataset).tag


def checkpoint_dir(cfg: FtopsConfig, task_type: str, run_key: str) -> Path:
    """The durable checkpoint folder of one training run key (a retry finds it again)."""
    import hashlib

    digest = hashlib.sha256(run_key.encode()).hexdigest()[:16]
    return cfg.storage.checkpoint_root() / task_type / digest


def weights_artifact(tags: dict[str, str]) -> str:
    """The MLflow artifact folder holding a run's trained weights: ``adapter`` (LoRA) or ``full_model``."""
    return tags.get("ftops.weights", "adapter")


def train_candidate(cfg: FtopsConfig, task_type: str, dataset: str | None, *, run_key: str) -> dict[str, Any]:
    """Fine-tune a candidate on a dataset version and log it as an MLflow run.

    The run gets params, the dataset input, progress metrics as training goes (``train_loss``,
    ``tokens_per_s``, ``eta_s``, ``learning_rate`` by step), the weights (``adapter/`` or ``full_model/``) and
    the model in MLflow's ``transformers`` flavour (``model/``, loadable with ``mlflow.transformers.load_model``).

    Retry-safe: a finished run with the same run key is returned instead of training again; an unfinished
    one (the worker crashed or was killed) is continued, and training resumes from the newest checkpoint in
    :func:`checkpoint_dir`. Checkpoints are deleted once the run has its model.
    """
    import mlflow

    from ftops.training import Progress, fine_tune, remove_checkpoints

    backend = _hf_backend(cfg)
    base_model = _check_base_model(backend.base_model)
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, dataset)
    existing = registry.find_run(task_type, run_key)
    if existing:
        log.info("Run key %s already trained as MLflow run %s: reusing it", run_key, existing)
        return {"run_id": existing, "dataset_version": version.tag}
    train = datasets.read(version, "train")
    if len(train) < cfg.gate.min_test_examples:
        raise ValueError(f"{version.tag} has only {len(train)} training examples")

    def log_progress(p: Progress) -> None:
        mlflow.log_metrics({"train_loss": p.loss, "tokens_per_s": p.tokens_per_s, "eta_s": p.eta_s,
                            "learning_rate": p.learning_rate, "epoch": p.epoch}, step=p.step)  # fmt: skip

    checkpoints = checkpoint_dir(cfg, task_type, run_key)
    weights = "adapter" if backend.method == "lora" else "full_model"
    lineage = {"backend": backend.kind, "base_model": backend.base_model, "ftops.weights": weights}
    params = backend.model_dump(mode="json") | {"train_examples": len(train)}
    with tempfile.TemporaryDirectory() as tmp, candidate_run(
        task_type, run_key, version, datasets.root, run_name=f"{task_type}-{version.tag.rsplit('/', 1)[-1]}",
        tags=lineage, params=params,
    ) as (run, _):
        result = fine_tune(base_model, train, Path(tmp) / weights, backend, checkpoint_dir=checkpoints,
                           on_progress=log_progress)  # fmt: skip
        mlflow.log_metrics({
            "train_first_loss": result.first_loss, "train_final_loss": result.final_loss,
            "train_seconds": result.seconds, "train_tokens": result.train_tokens, "train_steps": result.steps,
            "train_resumed_from_step": result.resumed_from_step,
        })  # fmt: skip
        mlflow.set_tags({"padding_free": str(result.padding_free), "precision": result.precision})
        mlflow.log_artifacts(str(result.output_dir), weights)
        mlflow.set_tag("ftops.model_id", _log_transformers_model(base_model, result.output_dir, backend.method))
    remove_checkpoints(checkpoints)
    return {"run_id": run.info.run_id, "dataset_version": version.tag, "final_loss": result.final_loss}


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


def _log_dataset_input(version: DatasetVersion, repo: Path) -> None:
    """Lineage: the dataset version as an MLflow dataset input (source = DVC repo at the tag)."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = HTTPDatasetSource(url=f"{repo.as_uri()}@{version.tag}")
    dataset = MetaDataset(source=source, name=version.tag, digest=version.content_hash[:32])  # type: ignore[abstract]
    mlflow.log_input(dataset, context="training")


@contextmanager
def candidate_run(
    task_type: str, run_key: str, version: DatasetVersion, repo: Path, *, run_name: str, tags: dict[str, str],
    params: dict[str, Any],
) -> Iterator[tuple[Any, bool]]:
    """The MLflow run of one training run key, as ``(active run, resumed)``.

    A new run gets the lineage: run key, dataset version and content hash, task type, ``tags`` (backend,
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
            mlflow.set_tags({"ftops.run_key": run_key, "dataset_version": version.tag,
                             "content_hash": version.content_hash, "task_type": task_type, **tags})  # fmt: skip
            mlflow.log_params(params)
            _log_dataset_input(version, repo)
        yield run, resumed is not None


def _load_local_model(tags: dict[str, str], weights_uri: str, folder: str) -> LoadedModel | None:
    """The local model a training run's tags describe: the base model plus its trained weights (adapter or
    full model) downloaded from ``weights_uri``, or the untuned base when the URI is empty. None for an API
    model (``backend: openai``), which is evaluated through the API."""
    from ftops.evaluation import load_model

    if tags.get("backend") == "openai":
        return None
    base = _check_base_model(tags["base_model"])
    return load_model(base, _mlflow_download(weights_uri, folder) if weights_uri else None)


def _evaluate_models(
    specs: list[tuple[dict[str, str], str]], test: list[dict[str, Any]], cfg: FtopsConfig, folder: str,
    api_client: Callable[[], Any] | None,
) -> list[EvalResult]:
    """Evaluate models given as (training run tags, weights URI) on the same test rows.

    An API model is asked through chat completions (``openai.fine_tuned_model``, or its base model when
    untuned). When every model is local, single-request latency is timed with all of them loaded,
    interleaved prompt by prompt (:func:`ftops.evaluation.time_single_requests`), so a load spike on the
    machine cannot favour one of them.
    """
    from ftops.evaluation import LATENCY_SAMPLE, evaluate, time_single_requests

    loaded = [_load_local_model(tags, uri, f"{folder}/{i}") for i, (tags, uri) in enumerate(specs)]
    local = [m for m in loaded if m is not None]
    together = len(local) == len(loaded) > 1
    results = []
    for (tags, _), model in zip(specs, loaded, strict=True):
        if model is None:
            from ftops.api_training import MODEL_TAG, evaluate_api_model

            if api_client is None:
                raise ValueError("an API model is to be evaluated but no API connection was given")
            results.append(evaluate_api_model(api_client(), tags.get(MODEL_TAG) or tags["base_model"], test))
        else:
            results.append(evaluate(model, test, cost_per_hour=cfg.gate.compute_cost_per_hour,
                                    latency_sample=0 if together else LATENCY_SAMPLE))  # fmt: skip
    if together:
        for result, latency in zip(results, time_single_requests(local, test), strict=True):
            result.metrics.update(latency)
    return results


def _mlflow_download(uri: str, folder: str) -> str:
    import mlflow

    return str(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))


def evaluate_candidate(
    cfg: FtopsConfig, task_type: str, run_id: str, *, api_client: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Evaluate candidate and baseline (champion, or the base model) on the test split; apply the gate.

    Both models answer the same test examples in the same order, so the accuracy gain gets a paired
    bootstrap confidence interval (``cfg.gate.confidence``, ``cfg.gate.bootstrap_resamples``, fixed seed:
    a retry reaches the same decision on the same answers). The candidate's MLflow run gets the metrics
    (``candidate_*``, ``baseline_*``, ``accuracy_gain`` and its CI bounds) and ``evaluation/report.json``,
    ``evaluation/report.md`` and ``evaluation/outputs.jsonl`` (every example's prompt, reference, both
    answers and whether each was right). Retry-safe (evaluation has no side effect but the run's metrics
    and report, which are overwritten).

    Returns:
        The report (small enough for XCom): metrics of both, the gain's CI and the gate decision.
    """
    import mlflow

    from ftops.evaluation import paired_bootstrap
    from ftops.gate import apply_gate

    c = registry.client()
    run = c.get_run(run_id)
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, run.data.tags["dataset_version"])
    test = datasets.read(version, "test")
    tags = run.data.tags
    champion = registry.alias_version(task_type, registry.CHAMPION)
    if champion is not None:
        baseline_name = f"champion v{champion.version}"
        champ_run = c.get_run(str(champion.run_id))
        champ_tags = {**champ_run.data.tags, **champion.tags}
        baseline_spec = (champ_tags, f"{champ_run.info.artifact_uri}/{weights_artifact(champ_tags)}")
    else:
        baseline_name = f"base model {tags['base_model']}"
        baseline_spec = ({"backend": tags["backend"], "base_model": tags["base_model"]}, "")  # untuned
    with tempfile.TemporaryDirectory() as tmp:
        candidate_spec = (tags, f"{run.info.artifact_uri}/{weights_artifact(tags)}")
        candidate, baseline = _evaluate_models([candidate_spec, baseline_spec], test, cfg, tmp, api_client)
    ci = paired_bootstrap(candidate.correct, baseline.correct, resamples=cfg.gate.bootstrap_resamples,
                          confidence=cfg.gate.confidence, seed=0)  # fmt: skip
    gate = apply_gate(candidate.metrics, baseline.metrics, cfg.gate, ci)
    accuracy_gain = {"diff": ci[0], "low": ci[1], "high": ci[2], "confidence": cfg.gate.confidence,
                     "resamples": cfg.gate.bootstrap_resamples, "method": "paired bootstrap, percentile"}  # fmt: skip
    report = {
        "task_type": task_type, "dataset_version": version.tag, "baseline": baseline_name,
        "candidate_metrics": candidate.metrics, "baseline_metrics": baseline.metrics,
        "accuracy_gain": accuracy_gain, "gate": gate.as_dict(),
    }  # fmt: skip
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"candidate_{k}": float(v) for k, v in candidate.metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": float(v) for k, v in baseline.metrics.items()})
        mlflow.log_metrics({"accuracy_gain": ci[0], "accuracy_gain_ci_low": ci[1], "accuracy_gain_ci_high": ci[2]})
        mlflow.log_dict(report, "evaluation/report.json")
        mlflow.log_text(_markdown_table(candidate.metrics, baseline.metrics, baseline_name, accuracy_gain,
                                        gate.reasons), "evaluation/report.md")  # fmt: skip
        outputs = [
            {"prompt": p, "reference": r, "candidate": co, "baseline": bo, "candidate_correct": cc,
             "baseline_correct": bc}
            for (p, r), co, bo, cc, bc in zip(examples_of(test), candidate.outputs, baseline.outputs,
                                              candidate.correct, baseline.correct, strict=True)
        ]  # fmt: skip
        mlflow.log_text("".join(json.dumps(o) + "\n" for o in outputs), "evaluation/outputs.jsonl")
    log.info("Gate for %s run %s: %s\n%s", task_type, run_id, gate.decision.upper(), "\n".join(gate.reasons))
    return _json_safe(report)


def _json_safe(value: Any) -> Any:
    """NaN and infinities (an API model's perplexity) become None: XCom is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _markdown_table(
    candidate: dict[str, float],
    baseline: dict[str, float],
    baseline_name: str,
    accuracy_gain: dict[str, Any] | None = None,
    reasons: list[str] | None = None,
) -> str:
    lines = [f"| metric | candidate | {baseline_name} | difference |", "|---|---|---|---|"]
    for k in candidate:
        other = baseline.get(k, float("nan"))
        lines.append(f"| {k} | {candidate[k]:.4g} | {other:.4g} | {candidate[k] - other:+.4g} |")
    if accuracy_gain is not None:
        g = accuracy_gain
        lines.append(f"| accuracy gain, {g['confidence']:.0%} CI ({g['method']}, {g['resamples']} resamples) "
                     f"| | | {g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] |")  # fmt: skip
    if reasons:
        lines += ["", "Gate:", ""] + [f"- {r}" for r in reasons]
    return "\n".join(lines) + "\n"


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
        "baseline": evaluation["baseline"],
        "decision": gate["decision"],
        "reason": "; ".join(gate["reasons"]),
    }
    tags |= {f"metric.{k}": round(float(v), 4) for k, v in evaluation["candidate_metrics"].items() if v is not None}
    tags |= {f"baseline.{k}": round(float(v), 4) for k, v in evaluation["baseline_metrics"].items() if v is not None}
    model_id = run.data.tags.get("ftops.model_id")  # the transformers-flavour model (HF backend)
    source = f"models:/{model_id}" if model_id else f"{run.info.artifact_uri}/model"  # API: the model id's pointer
    return registry.register(task_type, run_id, source, tags, model_id=model_id)


def deploy_candidate(cfg: FtopsConfig, task_type: str, version: str) -> dict[str, Any]:
    """Champion if the task type has none, else canary at the configured traffic share. Idempotent."""
    role = registry.deploy(task_type, version, cfg.canary.traffic_percent)
    registry.set_tags(task_type, version, {"deployed_at": datetime.now(UTC).isoformat()})
    log.info("%s version %s deployed as %s", registry.model_name(task_type), version, role)
    return {"task_type": task_type, "version": version, "role": role}


def archive_candidate(task_type: str, version: str, reasons: list[str]) -> dict[str, Any]:
    """Mark a failed candidate archived with its reasons; aliases are untouched. Idempotent."""
    registry.set_tags(task_type, version, {"deployment": "archived", "archive_reason": "; ".join(reasons)})
    log.info("%s version %s archived: %s", registry.model_name(task_type), version, "; ".join(reasons))
    return {"task_type": task_type, "version": version, "role": "archived"}


# -- canary and rollback --------------------------------------------------------------------------------
def review_canary(engine: sa.Engine, cfg: FtopsConfig, task_type: str, now: datetime | None = None) -> dict[str, Any]:
    """Judge a task type's canary from live logs and hold, promote or roll it back."""
    from ftops.canary import judge
    from ftops.warehouse import live_metrics

    canary = registry.alias_version(task_type, registry.CANARY)
    if canary is None:
        return {"task_type": task_type, "action": "none", "reason": "no canary"}
    now = now or datetime.now(UTC)
    started = datetime.fromisoformat(canary.tags.get("deployed_at") or now.isoformat())
    window = max(started, now - timedelta(hours=cfg.canary.duration_hours * 2))
    table = cfg.interactions_table
    canary_metrics = live_metrics(engine, task_type, served_model_version(task_type, canary.version), window, table)
    champion = registry.alias_version(task_type, registry.CHAMPION)
    champion_metrics = (
        live_metrics(engine, task_type, served_model_version(task_type, champion.version), window, table)
        if champion else {}
    )  # fmt: skip
    verdict = judge(canary_metrics, champion_metrics, (now - started).total_seconds() / 3600, cfg.canary)
    if verdict.action == "promote":
        registry.promote_canary(task_type)
    elif verdict.action == "rollback":
        registry.retire_canary(task_type, verdict.reason)
    log.info("%s canary v%s: %s (%s)", task_type, canary.version, verdict.action, verdict.reason)
    return {"task_type": task_type, "version": str(canary.version), **verdict.as_dict(),
            "canary_metrics": canary_metrics, "champion_metrics": champion_metrics}  # fmt: skip


def rollback(task_type: str, to_version: str | None) -> dict[str, Any]:
    """Put ``to_version`` (default: the ``previous`` alias) back as champion; also retires any canary."""
    registry.retire_canary(task_type, "manual rollback")
    old, new = registry.restore_champion(task_type, to_version)
    log.info("%s champion: v%s -> v%s", registry.model_name(task_type), old or "none", new)
    return {"task_type": task_type, "from_version": old, "to_version": new}
