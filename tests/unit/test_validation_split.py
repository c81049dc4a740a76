"""The validation split and per-epoch validation: carved deterministically from the train split, one
``eval_loss`` per epoch in MLflow, and the checkpoint with the lowest one kept as the model.

The training test publishes a train split whose validation side (by prompt hash) is city-extraction rows and
whose training side is sentiment rows: training on sentiment makes city replies less likely every epoch
(measured eval_loss ~5.7, 5.9, 6.1), so the best checkpoint is the first, not the last, and the saved
model scoring the first epoch's loss shows the best checkpoint was loaded back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from ftops_dev.simulate import clean_chat_rows

from ftops.core.config import FtopsConfig
from ftops.training.data import MIN_VALIDATION_EXAMPLES, prompt_bucket, split_validation

TASK = "sentiment"
KEY = "manual__2026-11-30T00:00:00+00:00/sentiment-validation"
SHARE = 0.2


def test_the_split_is_stable_and_keeps_a_prompt_on_one_side() -> None:
    rows = clean_chat_rows(TASK, 200, seed=3)
    split = split_validation(rows, SHARE)
    assert split == split_validation(list(rows), SHARE) and not split.note  # same rows, same split: on every retry
    assert len(split.train) + len(split.validation) == len(rows)
    assert 0.1 < len(split.validation) / len(rows) < 0.3
    same_prompt = {**rows[0], "messages": [rows[0]["messages"][0], {"role": "assistant", "content": "other"}]}
    side = "validation" if rows[0] in split.validation else "train"
    assert same_prompt in getattr(split_validation([*rows, same_prompt], SHARE), side)  # the reply does not decide


def test_too_few_validation_rows_or_share_zero_train_on_everything() -> None:
    rows = clean_chat_rows(TASK, 30, seed=3)
    few = split_validation(rows, SHARE)
    assert few.train == rows and few.validation == [] and f"fewer than {MIN_VALIDATION_EXAMPLES}" in few.note
    off = split_validation(rows, 0.0)
    assert off.train == rows and off.validation == [] and off.note == "validation_share is 0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_store: None, one_torch_thread: None, tiny_base: Path) -> dict[str, Any]:
    from ftops.pipeline import finetune as stages
    from ftops.pipeline.common import dataset_registry

    tmp = tmp_path_factory.mktemp("validation")
    base = tiny_base
    cfg = FtopsConfig.model_validate({
        "training": {"backend": {"kind": "huggingface", "base_model": str(base), "method": "full", "epochs": 3,
                                 "batch_size": 8, "learning_rate": 0.003, "validation_share": SHARE}},
        "storage": {"dataset_repo": str(tmp / "datasets"), "dvc_remote": str(tmp / "remote"),
                    "checkpoints": str(tmp / "checkpoints")},
    })  # fmt: skip
    sentiment = [r for r in clean_chat_rows(TASK, 70, seed=5) if prompt_bucket(r) >= SHARE]
    cities = [r for r in clean_chat_rows("city_extraction", 100, seed=2) if prompt_bucket(r) < SHARE][:12]
    dataset_registry(cfg).publish(TASK, sentiment + cities, clean_chat_rows(TASK, 20, seed=9), {"source": "test"})
    result = stages.train_candidate(cfg, TASK, None, run_key=KEY)
    return {"result": result, "sentiment": len(sentiment), "cities": len(cities), "cfg": cfg}


def test_each_epoch_is_validated_in_mlflow_and_the_best_checkpoint_is_kept(trained: dict[str, Any]) -> None:
    from ftops.registry import models as registry

    c = registry.client()
    run = c.get_run(trained["result"]["run_id"])
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert (params["train_examples"], params["validation_examples"]) == (str(trained["sentiment"]), "12")
    assert "validation" not in params  # on

    history = sorted(c.get_metric_history(run.info.run_id, "eval_loss"), key=lambda m: m.step)
    losses = [m.value for m in history]
    assert len(losses) == 3  # one per epoch
    epochs = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "eval_epoch"), key=lambda m: m.step)]
    assert epochs == [1.0, 2.0, 3.0]
    best = losses.index(min(losses))
    assert best < 2, losses  # the data make later epochs worse (measured ~5.7, 5.9, 6.1)
    assert tags["best_checkpoint"] == f"checkpoint-{history[best].step}" and tags["best_epoch"] == str(best + 1)
    assert tags["stopped_early"] == "False"
    assert math.isclose(metrics["best_eval_loss"], losses[best], rel_tol=1e-6)
    # The saved model scores the best epoch's loss, not the last one's: the best checkpoint was loaded back.
    assert math.isclose(metrics["final_eval_loss"], losses[best], rel_tol=1e-4)
    assert not math.isclose(metrics["final_eval_loss"], losses[-1], rel_tol=1e-3)


def test_early_stopping_ends_training_after_epochs_without_improvement(trained: dict[str, Any]) -> None:
    from ftops.pipeline import finetune as stages
    from ftops.registry import models as registry

    cfg: FtopsConfig = trained["cfg"]
    backend = cfg.training.backend.model_copy(update={"epochs": 5, "early_stopping_patience": 1})
    early = cfg.model_copy(update={"training": cfg.training.model_copy(update={"backend": backend})})
    result = stages.train_candidate(early, TASK, None, run_key=KEY + "-early")
    c = registry.client()
    run = c.get_run(result["run_id"])
    assert len(c.get_metric_history(run.info.run_id, "eval_loss")) == 2  # epoch 2 was no better: stop
    assert run.data.tags["stopped_early"] == "True" and run.data.tags["best_epoch"] == "1"
