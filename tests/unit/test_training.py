"""Training on a tiny real model: the loss falls, the adapter moves, held-out scores improve; a killed run
resumes from its checkpoint to the same weights; padding-free batches give the padded loss; full
fine-tuning; out of memory and NaN are clear errors.

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
import torch
from ftops_dev.simulate import clean_chat_rows

from ftops.core.chat import pad_batch
from ftops.core.config import HuggingFaceBackend
from ftops.evaluation.evaluate import evaluate
from ftops.evaluation.generate import load_model
from ftops.evaluation.metrics import METRIC_KEYS, EvalResult, normalise
from ftops.training.basemodel import build_base_model, is_complete
from ftops.training.data import as_examples, tokenized_dataset
from ftops.training.hf import (
    Progress,
    TrainingError,
    TrainingOutOfMemoryError,
    TrainResult,
    choose_precision,
    fine_tune,
    latest_checkpoint,
)
from ftops.training.packing import flatten_batch, reply_loss, supports_padding_free, supports_reply_logits

TASK = "sentiment"
N_TRAIN = 128
N_TEST = 48
PRETRAIN_STEPS = 60
CORPUS_CHARS = 200_000
PARAMS = HuggingFaceBackend(epochs=10, batch_size=16, learning_rate=5e-3, lora_r=16, lora_alpha=32, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tiny_base: Path) -> Path:
    return tiny_base  # PRETRAIN_STEPS on CORPUS_CHARS


@pytest.fixture(scope="module")
def data() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = clean_chat_rows(TASK, N_TRAIN + N_TEST, seed=11)
    test_prompts = {r["messages"][0]["content"] for r in rows[N_TRAIN:]}
    train = [r for r in rows[:N_TRAIN] if r["messages"][0]["content"] not in test_prompts]
    return train, rows[N_TRAIN:]


PROGRESS: list[Progress] = []


@pytest.fixture(scope="module")
def run(base_dir: Path, data: tuple[list, list], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    train, _ = data
    return fine_tune(str(base_dir), train, tmp_path_factory.mktemp("adapter"), PARAMS, on_progress=PROGRESS.append)


@pytest.fixture(scope="module")
def before_after(base_dir: Path, run: TrainResult, data: tuple[list, list]) -> tuple[EvalResult, EvalResult]:
    _, test = data
    before = evaluate(load_model(str(base_dir)), test, max_new_tokens=24)
    after = evaluate(load_model(str(base_dir), run.output_dir), test, max_new_tokens=24)
    return before, after


def test_base_model_is_built_once(base_dir: Path) -> None:
    assert is_complete(base_dir)
    stamp = (base_dir / "config.json").stat().st_mtime_ns
    assert build_base_model(base_dir, pretrain_steps=PRETRAIN_STEPS) == base_dir
    assert (base_dir / "config.json").stat().st_mtime_ns == stamp


def test_loss_falls(run: TrainResult) -> None:
    assert run.steps == math.ceil(run.train_examples / PARAMS.batch_size) * PARAMS.epochs
    assert run.train_tokens > 0 and run.seconds > 0
    assert not run.padding_free and run.precision == "fp32"  # auto: padded under sdpa attention, fp32 on a CPU
    assert all(math.isfinite(x) for x in run.losses)
    assert run.final_loss < 0.6 * run.first_loss  # measured 5.01 -> 2.02


def test_progress_reports_step_loss_speed_and_eta(run: TrainResult) -> None:
    assert [p.loss for p in PROGRESS] == run.losses
    steps = [p.step for p in PROGRESS]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == run.steps
    assert all(p.tokens_per_s > 0 and p.max_steps == run.steps for p in PROGRESS)
    assert PROGRESS[-1].eta_s == 0 and PROGRESS[0].eta_s > 0


def test_adapter_weights_moved(run: TrainResult) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(run.output_dir / "adapter_model.safetensors"))
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
    import ftops.training.hf as hf

    calls = {"n": 0}
    original = hf.reply_loss

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        loss, outputs = original(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 2 else loss), outputs

    monkeypatch.setattr(hf, "reply_loss", poisoned)
    train, _ = data
    with pytest.raises(TrainingError, match="at step 2/"):
        fine_tune(str(base_dir), train[:32], tmp_path, PARAMS.model_copy(update={"epochs": 1}))


def test_rejects_rows_that_are_not_conversations(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError):
        fine_tune(str(base_dir), [{"messages": [{"role": "user", "content": "hi"}]}], tmp_path, PARAMS)


def test_out_of_memory_is_a_clear_error(
    base_dir: Path, data: tuple[list, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Trainer

    def out_of_memory(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "training_step", out_of_memory)
    train, _ = data
    with pytest.raises(TrainingOutOfMemoryError, match="at step 1/2 with batch_size 16 and max_seq_len 256"):
        fine_tune(str(base_dir), train[:32], tmp_path, PARAMS.model_copy(update={"epochs": 1}))


def test_padding_free_batches_give_the_padded_loss(base_dir: Path, data: tuple[list, list]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    assert supports_padding_free(model, len(tokenizer))
    examples = as_examples(tokenized_dataset(tokenizer, data[0][:8], 256, name="training", cache_dir=None))
    padded, flat = pad_batch(examples, tokenizer.pad_token_id or 0), flatten_batch(examples)
    assert flat["input_ids"].numel() == int(padded["attention_mask"].sum()) < padded["input_ids"].numel()
    with torch.no_grad():
        loss_padded = model(**padded, use_cache=False).loss
        loss_flat = model(**flat, use_cache=False).loss
        few = flatten_batch(examples[:2])  # short enough for the model's positions when they do not restart
        few_padded = model(**pad_batch(examples[:2], tokenizer.pad_token_id or 0), use_cache=False).loss
        leaky = model(input_ids=few["input_ids"], labels=few["labels"], use_cache=False).loss
    assert torch.allclose(loss_padded, loss_flat, atol=1e-5)
    assert not torch.allclose(few_padded, leaky, atol=1e-3)  # without restarting positions examples see each other


def test_logits_on_the_reply_only_give_the_models_own_loss(base_dir: Path, data: tuple[list, list]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    assert supports_reply_logits(model, len(tokenizer))
    examples = as_examples(tokenized_dataset(tokenizer, data[0][:8], 256, name="training", cache_dir=None))
    for batch in (pad_batch(examples, tokenizer.pad_token_id or 0), flatten_batch(examples)):
        with torch.no_grad():
            loss, outputs = reply_loss(model, batch)
            own = model(**batch, use_cache=False).loss
        labelled = int((batch["labels"][:, 1:] != -100).sum())
        assert outputs.logits.shape == (labelled, len(tokenizer))  # projected where a label is, nowhere else
        assert labelled < batch["input_ids"].numel() / 2
        assert torch.allclose(loss, own, atol=1e-5)


def test_precision_auto_is_bf16_only_on_a_gpu_that_supports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision("auto") == "bf16"
    assert choose_precision("fp32") == "fp32"


def test_full_fine_tuning_changes_the_base_weights(base_dir: Path, data: tuple[list, list], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    params = PARAMS.model_copy(update={"method": "full", "epochs": 1, "learning_rate": 1e-3})
    result = fine_tune(str(base_dir), data[0][:32], tmp_path / "full", params)
    assert result.method == "full" and result.steps == 2
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    before, after = load_file(str(base_dir / "model.safetensors")), load_file(str(tmp_path / "full" / "model.safetensors"))
    moved = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, moved  # every weight is trained, not an adapter
    loaded = load_model(str(base_dir), tmp_path / "full")
    assert "fully fine-tuned" in loaded.name


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(
    base_dir: Path, data: tuple[list, list], tmp_path: Path
) -> None:
    from kill_training import run_killed
    from safetensors.torch import load_file

    rows = data[0][:48]
    params = PARAMS.model_copy(update={"epochs": 2, "batch_size": 8, "checkpoint_every_steps": 4,
                                       "padding_free": "on"})  # 12 steps, on packed batches  # fmt: skip
    reference = fine_tune(str(base_dir), rows, tmp_path / "reference", params)
    spec = {"call": "fine_tune", "base": str(base_dir), "rows": rows, "out": str(tmp_path / "killed"),
            "checkpoints": str(tmp_path / "checkpoints"), "params": params.model_dump()}  # fmt: skip
    killed = run_killed(9, spec, tmp_path / "spec.json")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "killed").exists()
    assert latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "checkpoint-8"

    resumed = fine_tune(str(base_dir), rows, tmp_path / "resumed", params, checkpoint_dir=tmp_path / "checkpoints")
    assert resumed.resumed_from_step == 8 and resumed.steps == reference.steps == 12
    assert resumed.padding_free and reference.padding_free
    assert len(resumed.losses) < len(reference.losses)  # steps 1-8 were not trained again
    want = load_file(str(reference.output_dir / "adapter_model.safetensors"))
    got = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:  # same data order, same RNG state: the resumed run ends where the uninterrupted one did
        assert torch.allclose(want[key], got[key], atol=1e-5), key


def test_a_checkpoint_cut_short_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()  # the crash came before trainer_state.json was written
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_lora_target_modules_the_model_lacks_are_named_with_the_ones_it_has(base_dir: Path, tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"lora_target_modules": ("q_proj", "c_attn")})
    with pytest.raises(TrainingError, match=r"\['q_proj'\] are not in the model; its linear layers: .*c_attn"):
        fine_tune(str(base_dir), clean_chat_rows(TASK, 8, seed=3), tmp_path, params)
