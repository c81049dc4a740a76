"""LoRA training on a tiny real model: the loss falls, the adapter moves, held-out scores improve.

One module-scoped fixture builds a small base model (60 pre-training steps) and trains one adapter (80 steps);
the fast tests read that run. That budget teaches the reply template (perplexity ~20x lower) but not yet the
answer slot, so held-out accuracy is asserted end to end by tests/integration/test_pipeline.py, which
trains the real base model through ftops_finetune.
Thresholds leave headroom below the measured values noted by each assertion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from chat_rows import clean_chat_rows  # noqa: E402

from ftops.basemodel import build_base_model, is_complete  # noqa: E402
from ftops.config import HuggingFaceBackend  # noqa: E402
from ftops.evaluation import METRIC_KEYS, EvalResult, evaluate, load_model, normalise  # noqa: E402
from ftops.training import TrainingError, TrainResult, train_lora  # noqa: E402

TASK = "sentiment"
N_TRAIN = 128
N_TEST = 48
PRETRAIN_STEPS = 60
CORPUS_CHARS = 200_000
PARAMS = HuggingFaceBackend(epochs=10, batch_size=16, learning_rate=5e-3, lora_r=16, lora_alpha=32, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base_model(
        tmp_path_factory.mktemp("models") / "tiny", pretrain_steps=PRETRAIN_STEPS, max_corpus_chars=CORPUS_CHARS
    )


@pytest.fixture(scope="module")
def data() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = clean_chat_rows(TASK, N_TRAIN + N_TEST, seed=11)
    test_prompts = {r["messages"][0]["content"] for r in rows[N_TRAIN:]}
    train = [r for r in rows[:N_TRAIN] if r["messages"][0]["content"] not in test_prompts]
    return train, rows[N_TRAIN:]


@pytest.fixture(scope="module")
def run(base_dir: Path, data: tuple[list, list], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    train, _ = data
    return train_lora(str(base_dir), train, tmp_path_factory.mktemp("adapter"), PARAMS)


@pytest.fixture(scope="module")
def before_after(base_dir: Path, run: TrainResult, data: tuple[list, list]) -> tuple[EvalResult, EvalResult]:
    _, test = data
    before = evaluate(load_model(str(base_dir)), test, max_new_tokens=24)
    after = evaluate(load_model(str(base_dir), run.adapter_dir), test, max_new_tokens=24)
    return before, after


def test_base_model_is_built_once(base_dir: Path) -> None:
    assert is_complete(base_dir)
    stamp = (base_dir / "config.json").stat().st_mtime_ns
    assert build_base_model(base_dir, pretrain_steps=PRETRAIN_STEPS) == base_dir
    assert (base_dir / "config.json").stat().st_mtime_ns == stamp


def test_loss_falls(run: TrainResult) -> None:
    assert run.steps == math.ceil(run.train_examples / PARAMS.batch_size) * PARAMS.epochs
    assert run.train_tokens > 0 and run.seconds > 0
    assert all(math.isfinite(x) for x in run.losses)
    assert run.final_loss < 0.6 * run.first_loss  # measured 5.01 -> 2.02


def test_adapter_weights_moved(run: TrainResult) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b, sorted(weights)
    # LoRA initialises B to zero: any norm above zero is training's doing
    assert all(float(v.norm()) > 1e-3 for v in lora_b.values())


def test_held_out_scores_improve(before_after: tuple[EvalResult, EvalResult]) -> None:
    before, after = before_after
    assert before.metrics["n"] == after.metrics["n"] == N_TEST
    assert set(after.metrics) == set(METRIC_KEYS)
    # measured: perplexity 158 -> 7.6, ROUGE-L 0.13 -> 0.49, BLEU 0.1 -> 35
    assert after.metrics["perplexity"] < before.metrics["perplexity"] / 5
    assert after.metrics["rouge_l"] > before.metrics["rouge_l"] + 0.2
    assert after.metrics["bleu"] > before.metrics["bleu"] + 15


def test_normalise() -> None:
    assert normalise("  The city is  PARIS. ") == "the city is paris"
    assert normalise('"Sentiment: positive."') == "sentiment: positive"


def test_non_finite_loss_names_the_step(
    base_dir: Path, data: tuple[list, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Trainer

    calls = {"n": 0}
    original = Trainer.compute_loss

    def poisoned(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(Trainer, "compute_loss", poisoned)
    train, _ = data
    with pytest.raises(TrainingError, match="at step 2/"):
        train_lora(str(base_dir), train[:32], tmp_path, PARAMS.model_copy(update={"epochs": 1}))


def test_rejects_rows_that_are_not_conversations(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError):
        train_lora(str(base_dir), [{"messages": [{"role": "user", "content": "hi"}]}], tmp_path, PARAMS)
