"""Fine-tuning of a causal language model with Transformers: LoRA (PEFT) or all weights.

Training rows are chat conversations (``{"messages": [...]}``) rendered with the tokenizer's chat template;
the loss covers only the final assistant turn (labels are -100 on the prompt and on padding). Training runs
through :class:`transformers.Trainer` with:

* **padding-free batches** where they pay: a batch is one row of concatenated examples with
  ``position_ids`` restarting at 0 per example, so no compute goes to padding. Support is probed on the
  loaded model (packed logits must equal separate ones). ``padding_free: auto`` uses them only with flash
  attention, whose kernels attend within each example; with sdpa or eager attention the packed row gets a
  dense block-diagonal mask, n² for n packed tokens (on the tiny CPU model packing measured 8 % slower than
  padding per batch, see benchmarks/README.md). Otherwise batches are padded to their longest example.
* **logits only where a label is**: the loss covers the reply alone, so the LM head (on the tiny model as
  costly as its layers) projects only those positions, when the model takes a ``logits_to_keep`` mask (probed).
* **bf16 on a GPU** that supports it (``precision: auto``), fp32 on the CPU; fixed seeds.
* **durable checkpoints**: given a checkpoint folder, the Trainer saves a resumable checkpoint (weights,
  optimiser, scheduler, RNG state) every ``checkpoint_every_steps``; a retried task calling again with the
  same folder resumes from the newest complete checkpoint instead of starting over.
* **per-epoch validation** on rows carved from the train split (:mod:`ftops.training.data`): a checkpoint
  each epoch, the one with the lowest validation loss kept and saved, early stopping as an option.
* **data as a** :class:`datasets.Dataset`, tokenised by a ``map`` cached in the checkpoint folder.
* **progress** (step, loss, tokens/s, ETA) in the log and to an ``on_progress`` callback (MLflow metrics).
* a check that fails the run with :class:`TrainingError` at the first non-finite loss (the Trainer's own
  logging would otherwise filter NaN/inf out of its averages and carry on), and a clear
  :class:`TrainingOutOfMemoryError` that names the batch size and sequence length.

The result is a PEFT adapter (``method: lora``) or the full model (``method: full``), plus the tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.core.chat import pad_batch
from ftops.training.callbacks import Evaluation, Progress, evaluation_callback, progress_callback, save_every_callback
from ftops.training.data import TrainingError, as_examples, rows_fingerprint, tokenized_dataset
from ftops.training.packing import flatten_batch, reply_loss, supports_reply_logits, use_padding_free

if TYPE_CHECKING:
    import torch

    from ftops.core.config import HuggingFaceBackend


logger = logging.getLogger(__name__)

# GPT-2 names its fused QKV projection c_attn, its output projections c_proj and its MLP input c_fc.
LORA_TARGET_MODULES: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")

# The final layer norm is trained in full (256 numbers for the tiny model, saved in the adapter). With it
# frozen, LoRA on a small base plateaued (loss ~0.9 after 400 steps, outputs with the right template but the
# wrong slot): the frozen norm caps how far the logits can move. With it trainable the loss fell to ~0.4 in
# 100 steps. Only names the model actually has are used, so other architectures get plain LoRA.
LORA_MODULES_TO_SAVE: tuple[str, ...] = ("ln_f",)


class TrainingOutOfMemoryError(TrainingError):
    """The device ran out of memory; the message names the step, batch size and sequence length."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and how it went."""

    output_dir: Path  # adapter (lora) or full model (full), with the tokenizer
    method: str
    steps: int
    epochs: int
    train_examples: int
    train_tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    first_loss: float = math.nan
    final_loss: float = math.nan
    resumed_from_step: int = 0  # 0: started from scratch
    padding_free: bool = False
    precision: str = "fp32"
    validation_examples: int = 0  # 0: no validation split, no per-epoch evaluation
    evaluations: list[Evaluation] = field(default_factory=list)  # eval_loss per epoch, this attempt's
    best_checkpoint: str | None = None  # the checkpoint kept (lowest eval_loss), e.g. "checkpoint-12"
    best_epoch: float = math.nan  # the epoch that ended at best_checkpoint
    best_eval_loss: float = math.nan
    final_eval_loss: float = math.nan  # the saved model's validation loss: equals best_eval_loss
    stopped_early: bool = False


def choose_precision(setting: str) -> str:
    """``bf16`` or ``fp32``: ``auto`` picks bf16 on a CUDA GPU that supports it, fp32 otherwise."""
    import torch

    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint under ``folder`` (``trainer_state.json`` is written last)."""
    complete = []
    for path in folder.glob("checkpoint-*"):
        try:
            step = int(path.name.removeprefix("checkpoint-"))
            json.loads((path / "trainer_state.json").read_text())
        except (ValueError, OSError):  # a checkpoint cut short by a crash
            continue
        complete.append((step, path))
    return max(complete)[1] if complete else None


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _make_trainer_class() -> type:
    """Build the Trainer subclass lazily, so importing this module stays free of transformers."""
    import torch
    from transformers import Trainer

    class _CheckedTrainer(Trainer):  # type: ignore[misc]
        """A Trainer that fails at the first non-finite loss and counts the tokens it trains on."""

        tokens_seen = 0
        reply_logits_only = False  # True: the LM head only where a label is (see reply_loss)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            if not self.reply_logits_only:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = reply_loss(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
            self.tokens_seen += int(inputs["input_ids"].numel() if "attention_mask" not in inputs
                                    else inputs["attention_mask"].sum())  # fmt: skip
            loss = super().training_step(model, inputs, *args, **kwargs)
            if not torch.isfinite(loss).all():
                step = self.state.global_step + 1
                raise TrainingError(f"loss is {loss.item()} at step {step}/{self.state.max_steps}; training diverged")
            return loss

    return _CheckedTrainer


def lora_config(base: Any, params: HuggingFaceBackend) -> Any:
    """The :class:`peft.LoraConfig` of ``params`` for this model (SFT and DPO adapt the same layers)."""
    import torch
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    modules = {name.rsplit(".", 1)[-1]: module for name, module in base.named_modules()}
    if params.lora_target_modules:
        targets = [name for name in params.lora_target_modules if name in modules]
        missing = sorted(set(params.lora_target_modules) - set(targets))
        if missing:
            linear = sorted(n for n, m in modules.items() if isinstance(m, torch.nn.Linear | Conv1D))
            raise TrainingError(f"lora_target_modules {missing} are not in the model; its linear layers: {linear}")
    else:
        targets = [name for name in LORA_TARGET_MODULES if name in modules]
    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=targets or "all-linear",
        task_type="CAUSAL_LM",
        # GPT-2 keeps its weights in Conv1D layers, stored (in, out); PEFT must transpose them when merging.
        fan_in_fan_out=any(isinstance(modules[name], Conv1D) for name in targets),
        modules_to_save=[name for name in LORA_MODULES_TO_SAVE if name in modules] or None,
    )


def fine_tune(
    base_model: str,
    train_rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    params: HuggingFaceBackend,
    *,
    validation_rows: Sequence[Mapping[str, Any]] = (),
    checkpoint_dir: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_evaluate: Callable[[Evaluation], None] | None = None,
) -> TrainResult:
    """Fine-tune on chat conversations and save the adapter (or full model) with the tokenizer.

    With validation rows the model is evaluated at the end of every epoch, a checkpoint is saved there, and
    the one with the lowest validation loss is what is saved (``load_best_model_at_end``); with
    ``params.early_stopping_patience`` training stops after that many epochs without improvement.

    Args:
        base_model: A resolved local path or hub id of a causal LM with a chat template.
        train_rows: Rows ``{"messages": [{"role": ..., "content": ...}, ...]}`` ending with the assistant turn.
        out_dir: Where the adapter (``adapter_config.json``, ``adapter_model.safetensors``) or the full model
            (``config.json``, ``model.safetensors``) and the tokenizer go.
        params: Method and hyperparameters: method, epochs, learning_rate, batch_size, lora_*, max_seq_len,
            seed, precision, padding_free, checkpoint_every_steps, early_stopping_patience.
        validation_rows: Rows to evaluate on each epoch (see :func:`ftops.training.data.split_validation`);
            empty: no evaluation, the last step's weights are saved.
        checkpoint_dir: A durable folder for resumable checkpoints (and the tokenised data); one that already
            holds a complete checkpoint is resumed from. ``None``: no durable checkpoints.
        on_progress: Called with every progress report (e.g. to log MLflow metrics).
        on_evaluate: Called with every epoch's validation loss.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        TrainingError: No usable examples, or the loss became NaN/inf (the message names the step).
        TrainingOutOfMemoryError: The device ran out of memory.
    """
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        EarlyStoppingCallback,
        PrinterCallback,
        TrainingArguments,
        set_seed,
    )

    out_dir = Path(out_dir)
    set_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TrainingError(f"tokenizer of {base_model} has no chat template")
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def tokenize(rows: Sequence[Mapping[str, Any]], name: str) -> Any:
        key = rows_fingerprint(rows, base_model, len(tokenizer), params.max_seq_len)
        return tokenized_dataset(tokenizer, rows, params.max_seq_len, name=name, cache_dir=checkpoint_dir,
                                 cache_key=key)  # fmt: skip

    examples = tokenize(train_rows, "training")
    evaluation_set = tokenize(validation_rows, "validation") if validation_rows else None
    validating = evaluation_set is not None

    precision = choose_precision(params.precision)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    padding_free = use_padding_free(params.padding_free, base, len(tokenizer))
    base.config.use_cache = False  # training needs no cache, and packed sequences are only found without one
    model = get_peft_model(base, lora_config(base, params)) if params.method == "lora" else base
    reply_logits = supports_reply_logits(model, len(tokenizer))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(len(examples) / params.batch_size)
    max_steps = steps_per_epoch * params.epochs
    logger.info(
        "%s on %s: %d examples (%s), %d epochs x %d steps, batch %d (%s%s), lr %.1e, %s; %d of %d parameters trainable",
        f"LoRA (r={params.lora_r})" if params.method == "lora" else "Full fine-tuning",
        base_model,
        len(examples),
        f"{len(evaluation_set)} to validate each epoch" if evaluation_set is not None else "no validation",
        params.epochs,
        steps_per_epoch,
        params.batch_size,
        "padding-free" if padding_free else "padded to the longest example",
        ", logits on the reply only" if reply_logits else "",
        params.learning_rate,
        precision,
        trainable,
        total,
    )

    resume = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if resume is not None:
        logger.info("Resuming from checkpoint %s", resume)
    pad_id = tokenizer.pad_token_id
    losses: list[float] = []
    evaluations: list[Evaluation] = []
    started = time.monotonic()
    trainer_ref: list[Any] = []
    save_every = params.checkpoint_every_steps or max(1, max_steps // 10)
    with tempfile.TemporaryDirectory(prefix="ftops-train-") as scratch:
        args = TrainingArguments(
            output_dir=str(checkpoint_dir or scratch),
            num_train_epochs=params.epochs,
            per_device_train_batch_size=params.batch_size,
            per_device_eval_batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=max(1, max_steps // 20),
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_strategy="steps",
            logging_steps=max(1, max_steps // 20),
            logging_first_step=True,
            # Evaluating needs a checkpoint per epoch to keep the best (in scratch without a durable folder);
            # the step checkpoints for resuming then come from save_every_callback.
            eval_strategy="epoch" if validating else "no",
            save_strategy="epoch" if validating else "steps" if checkpoint_dir is not None else "no",
            save_steps=save_every,
            # The newest and one before it, should the newest be cut short; and the best (never deleted).
            save_total_limit=3 if validating else 2,
            load_best_model_at_end=validating,
            metric_for_best_model="eval_loss" if validating else None,
            greater_is_better=False if validating else None,
            prediction_loss_only=True,
            label_names=["labels"],
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            bf16=precision == "bf16",
            use_cpu=not torch.cuda.is_available(),
            seed=params.seed,
            data_seed=params.seed,
        )
        callbacks = [progress_callback(trainer_ref, started, losses, on_progress),
                     evaluation_callback(evaluations, on_evaluate)]  # fmt: skip
        if validating and checkpoint_dir is not None:
            callbacks.append(save_every_callback(save_every))
        if validating and params.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
        collate = flatten_batch if padding_free else (lambda batch: pad_batch(batch, pad_id))
        trainer = _make_trainer_class()(
            model=model,
            args=args,
            train_dataset=examples,
            eval_dataset=evaluation_set,
            data_collator=lambda batch: collate(as_examples(batch)),
            callbacks=callbacks,
        )
        # With tqdm off the Trainer prints each log dict to stdout; our callback logs them instead.
        trainer.remove_callback(PrinterCallback)
        trainer.reply_logits_only = reply_logits
        trainer_ref.append(trainer)
        try:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            trainer.remove_callback(EarlyStoppingCallback)  # else it warns "early stopping is disabled" below
            # The weights now in memory are the best checkpoint's: check that they score its validation loss.
            final_eval = trainer.evaluate(metric_key_prefix="final")["final_loss"] if validating else math.nan
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise TrainingOutOfMemoryError(
                    f"out of memory at step {trainer.state.global_step + 1}/{max_steps} with batch_size "
                    f"{params.batch_size} and max_seq_len {params.max_seq_len}: lower either (or use LoRA "
                    f"instead of full fine-tuning) and trigger again"
                ) from exc
            raise
    seconds = time.monotonic() - started
    best = trainer.state.best_model_checkpoint
    best_loss = trainer.state.best_metric
    best_step = int(Path(best).name.removeprefix("checkpoint-")) if best else -1
    # The state's log history spans attempts (it is restored with a checkpoint); evaluations only this one's.
    best_epoch = next((e["epoch"] for e in trainer.state.log_history if "eval_loss" in e and e["step"] == best_step),
                      math.nan)  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    base.config.use_cache = True  # for generation with the saved model
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    resumed_from = int(resume.name.removeprefix("checkpoint-")) if resume else 0
    result = TrainResult(
        output_dir=out_dir,
        method=params.method,
        steps=int(output.global_step),
        epochs=params.epochs,
        train_examples=len(examples),
        train_tokens=int(trainer.tokens_seen),
        seconds=round(seconds, 2),
        losses=losses,
        first_loss=losses[0] if losses else math.nan,
        final_loss=losses[-1] if losses else math.nan,
        resumed_from_step=resumed_from,
        padding_free=padding_free,
        precision=precision,
        validation_examples=len(evaluation_set) if evaluation_set is not None else 0,
        evaluations=evaluations,
        best_checkpoint=Path(best).name if best else None,
        best_epoch=float(best_epoch),
        best_eval_loss=float(best_loss) if best_loss is not None else math.nan,
        final_eval_loss=float(final_eval),
        stopped_early=int(output.global_step) < max_steps,
    )
    logger.info(
        "Trained steps %d-%d in %.1fs (%d tokens, %.0f tokens/s); loss %.4f -> %.4f; saved to %s",
        resumed_from + 1,
        result.steps,
        seconds,
        result.train_tokens,
        result.train_tokens / max(seconds, 1e-9),
        result.first_loss,
        result.final_loss,
        out_dir,
    )
    if validating:
        logger.info("Kept %s (epoch %g): validation loss %.4f (the saved model scores %.4f)%s",
                    result.best_checkpoint, result.best_epoch, result.best_eval_loss, result.final_eval_loss,
                    "; stopped early" if result.stopped_early else "")  # fmt: skip
    return result


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """Delete a run's checkpoints once its result is stored durably elsewhere."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
