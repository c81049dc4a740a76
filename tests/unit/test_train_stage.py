"""The training stage against real stores (MLflow SQLite, a DVC dataset registry) and a tiny real model.

A worker killed mid-training leaves an unfinished MLflow run and checkpoints; the retry continues that run
from the newest checkpoint (one run per run key) and logs the model in MLflow's transformers flavour,
which loads back as the trained model. A crash after registration but before the alias is completed by a
re-run without a second version. An unreachable MLflow store is a clear, retryable error before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ftops_dev.simulate import clean_chat_rows
from kill_training import run_killed

from ftops.core.config import FtopsConfig
from ftops.pipeline import finetune as stages
from ftops.pipeline.common import dataset_registry
from ftops.registry import models as registry
from ftops.training.basemodel import build_base_model

pytestmark = pytest.mark.usefixtures("mlflow_store", "one_torch_thread")
TASK = "sentiment"
KEY = "manual__2026-11-25T00:00:00+00:00/sentiment"
KILL_AT_STEP = 4  # 40 rows / batch 8 = 5 steps x 2 epochs; checkpoints every 3 steps

@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> FtopsConfig:
    tmp = tmp_path_factory.mktemp("stage")
    base = build_base_model(tmp / "tiny", pretrain_steps=60, max_corpus_chars=200_000)
    config = FtopsConfig.model_validate({
        "training": {"backend": {"kind": "huggingface", "base_model": str(base), "epochs": 2, "batch_size": 8,
                                 "checkpoint_every_steps": 3}},
        "gate": {"min_test_examples": 5},
        "storage": {"dataset_repo": str(tmp / "datasets"), "dvc_remote": str(tmp / "remote"),
                    "checkpoints": str(tmp / "checkpoints")},
    })  # fmt: skip
    rows = clean_chat_rows(TASK, 60, seed=5)
    dataset_registry(config).publish(TASK, rows[:40], rows[40:], {"source": "test_train_stage"})
    return config


@pytest.fixture(scope="module")
def killed(cfg: FtopsConfig, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Train in a subprocess that is SIGKILLed at step 4; returns the unfinished run's id."""
    spec = {"call": "train_candidate", "cfg": cfg.model_dump(mode="json"), "task_type": TASK, "run_key": KEY}
    proc = run_killed(KILL_AT_STEP, spec, tmp_path_factory.mktemp("kill") / "spec.json")
    assert proc.returncode == -9, proc.stderr[-3000:]
    run_id = registry.unfinished_run(TASK, KEY)
    assert run_id is not None and registry.find_run(TASK, KEY) is None
    assert registry.client().get_run(run_id).info.status == "RUNNING"  # killed: nobody marked it failed
    return run_id


@pytest.fixture(scope="module")
def resumed(cfg: FtopsConfig, killed: str) -> dict[str, Any]:
    checkpoints = stages.checkpoint_dir(cfg, TASK, KEY)
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3"]
    return stages.train_candidate(cfg, TASK, None, run_key=KEY)


def test_the_retry_continues_the_killed_run_from_its_checkpoint(
    cfg: FtopsConfig, killed: str, resumed: dict[str, Any]
) -> None:
    c = registry.client()
    assert resumed["run_id"] == killed
    run = c.get_run(killed)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train_resumed_from_step"] == 3 and run.data.metrics["train_steps"] == 10
    runs = c.search_runs([registry.experiment_id(TASK)], filter_string=f"tags.`ftops.run_key` = '{KEY}'")
    assert [r.info.run_id for r in runs] == [killed]  # one run per run key, however many attempts
    assert not stages.checkpoint_dir(cfg, TASK, KEY).exists()  # the model is in MLflow: checkpoints go
    assert stages.train_candidate(cfg, TASK, None, run_key=KEY)["run_id"] == killed  # finished: not trained again


def test_progress_is_logged_to_mlflow_by_step(killed: str, resumed: dict[str, Any]) -> None:
    c = registry.client()
    for metric in ("train_loss", "tokens_per_s", "eta_s", "learning_rate", "max_steps"):
        history = c.get_metric_history(killed, metric)
        steps = {m.step for m in history}
        assert 10 in steps and min(steps) <= 3, (metric, sorted(steps))  # both attempts reported
    final_eta = [m.value for m in c.get_metric_history(killed, "eta_s") if m.step == 10]
    assert final_eta == [0.0]
    assert {m.value for m in c.get_metric_history(killed, "max_steps")} == {10}  # ftops status: step / max_steps
    params = c.get_run(killed).data.params  # 40 rows put 7 in validation, too few: all 40 train, said why
    assert (params["train_examples"], params["validation_examples"]) == ("40", "0")
    assert params["validation"].startswith("off: 7 of 40 rows fall in validation, fewer than 10")


def test_the_transformers_flavour_model_is_the_trained_model(resumed: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    from ftops.evaluation.generate import load_model

    run = registry.client().get_run(resumed["run_id"])
    model_id = run.data.tags["ftops.model_id"]
    components = mlflow.transformers.load_model(f"models:/{model_id}", return_type="components")
    adapter = mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/adapter", dst_path=str(tmp_path))
    ours = load_model(run.data.tags["base_model"], adapter)
    ids = ours.tokenizer("How was the film?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = ours.model(input_ids=ids).logits
        got = components["model"].eval()(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    untrained = load_model(run.data.tags["base_model"])
    with torch.no_grad():
        assert not torch.allclose(untrained.model(input_ids=ids).logits, got, atol=1e-2)


def test_a_crash_between_registration_and_alias_is_completed_by_the_rerun(
    cfg: FtopsConfig, resumed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    evaluation = {"baseline": "base model", "gate": {"decision": "deploy", "passed": True, "reasons": ["ok: all"]},
                  "candidate_metrics": {"accuracy": 0.5}, "baseline_metrics": {"accuracy": 0.1}}  # fmt: skip
    version = stages.register_candidate(TASK, resumed["run_id"], evaluation)
    real = MlflowClient.set_registered_model_alias

    def crash(self: MlflowClient, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("worker lost its connection before setting the alias")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(ConnectionError):
        stages.deploy_candidate(cfg, TASK, version)
    assert registry.alias_version(TASK, registry.CHAMPION) is None
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)

    assert stages.register_candidate(TASK, resumed["run_id"], evaluation) == version  # the re-run
    assert stages.deploy_candidate(cfg, TASK, version)["role"] == "champion"
    versions = registry.versions(TASK)
    assert [str(v.version) for v in versions] == [version]
    assert versions[0].source == f"models:/{registry.client().get_run(resumed['run_id']).data.tags['ftops.model_id']}"
    assert str(registry.alias_version(TASK, registry.CHAMPION).version) == version
    import mlflow

    served = mlflow.transformers.load_model(f"models:/{registry.model_name(TASK)}@champion")  # as a server would
    assert served("How was the film?", max_new_tokens=4)[0]["generated_text"].startswith("How was the film?")


def test_an_unreachable_mlflow_store_is_a_clear_retryable_error_before_any_work(
    cfg: FtopsConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ftops:hunter2@127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(registry.RegistryUnavailableError) as err:
        stages.train_candidate(cfg, TASK, None, run_key="unreachable")
    assert isinstance(err.value, ConnectionError)  # Airflow retries it
    assert "127.0.0.1:9 cannot be reached" in str(err.value) and "hunter2" not in str(err.value)
    assert not stages.checkpoint_dir(cfg, TASK, "unreachable").exists()  # nothing was trained


def test_bad_training_requests_fail_before_any_work(cfg: FtopsConfig) -> None:
    from ftops.datasets.versions import DatasetNotFoundError

    rows = clean_chat_rows(TASK, 8, seed=6)
    dataset_registry(cfg).publish("tiny", rows[:3], rows[3:], {"source": "test_train_stage: tiny"})
    with pytest.raises(ValueError, match="dataset/tiny/v1 has only 3 training examples"):
        stages.train_candidate(cfg, "tiny", None, run_key="tiny-run")
    with pytest.raises(DatasetNotFoundError, match="v9.*known: dataset/sentiment/v1"):
        stages.check_training_request(cfg, TASK, "v9")
    missing = cfg.model_copy(update={"training": cfg.training.model_copy(update={
        "backend": cfg.training.backend.model_copy(update={"base_model": "/nonexistent/base"})})})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="base model path /nonexistent/base does not exist"):
        stages.check_training_request(missing, TASK, None)
    assert registry.find_run("tiny", "tiny-run") is None and registry.unfinished_run("tiny", "tiny-run") is None
