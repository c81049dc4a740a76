"""LoRA fine-tuning of a causal language model with Transformers + PEFT.

Training rows are chat conversations (``{"messages": [...]}``) rendered with the tokenizer's chat template;
the loss covers only the final assistant turn (labels are -100 on the prompt and on padding). Training runs
through :class:`transformers.Trainer`, with a callback that writes progress lines to the log and a check that
fails the run with :class:`TrainingError` at the first non-finite loss (the Trainer's own logging would
otherwise filter NaN/inf out of its averages and carry on). The result is a PEFT adapter plus the tokenizer.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from ftops.config import HuggingFaceBackend

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# GPT-2 names its fused QKV projection c_attn, its output projections c_proj and its MLP input c_fc.
LORA_TARGET_MODULES: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
# The final layer norm is trained in full (256 numbers for the tiny model, saved in the adapter). With it
# frozen, LoRA on a small base plateaued (loss ~0.9 after 400 steps, outputs with the right template but the
# wrong slot): the frozen norm caps how far the logits can move. With it trainable the loss fell to ~0.4 in
# 100 steps. Only names the model actually has are used, so other architectures get plain LoRA.
LORA_MODULES_TO_SAVE: tuple[str, ...] = ("ln_f",)


class TrainingError(RuntimeError):
    """Training could not go on: bad input data or a diverged (NaN/inf) loss."""


@dataclass(frozen=True)
class TrainResult:
    """What a LoRA training run produced and how it went."""

    adapter_dir: Path
    steps: int
    epochs: int
    train_examples: int
    train_tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    first_loss: float = math.nan
    final_loss: float = math.nan


@dataclass(frozen=True)
class EncodedExample:
    """One conversation as token ids, with labels only on the final assistant turn."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int


def split_conversation(messages: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, str]], str]:
    """Split a conversation into the prompt turns and the final assistant reply.

    Args:
        messages: Chat turns, ``{"role": ..., "content": ...}``, ending with an assistant turn.

    Returns:
        The turns before the final reply, and the reply's text.

    Raises:
        TrainingError: The conversation is empty, has no prompt, or does not end with an assistant turn.
    """
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise TrainingError("a conversation needs at least one prompt turn and must end with an assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], max_len: int | None = None
) -> EncodedExample:
    """Tokenise a conversation with the chat template, masking everything but the final reply.

    The prompt (rendered with ``add_generation_prompt=True``) and the completion (the rest of the fully
    rendered conversation, e.g. the reply and its end-of-turn token) are tokenised separately, so the
    prompt tokens are exactly what generation later starts from.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: Chat turns ending with the assistant reply to learn.
        max_len: Cut the example to this many tokens (from the end); ``None`` keeps it whole.

    Returns:
        The ids, the labels (``-100`` on the prompt) and the prompt length.

    Raises:
        TrainingError: The template renders the prompt differently from the start of the full conversation.
    """
    prompt_turns, _ = split_conversation(messages)
    full = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False)
    prompt = tokenizer.apply_chat_template(prompt_turns, tokenize=False, add_generation_prompt=True)
    if not isinstance(full, str) or not isinstance(prompt, str) or not full.startswith(prompt):
        raise TrainingError("the chat template's generation prompt is not a prefix of the rendered conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    input_ids = list(prompt_ids) + list(completion_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)
    if max_len is not None:
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    return EncodedExample(input_ids=input_ids, labels=labels, prompt_len=len(prompt_ids))


def pad_batch(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _make_trainer_class() -> type:
    """Build the Trainer subclass lazily, so importing this module stays free of transformers."""
    import torch
    from transformers import Trainer

    class _CheckedTrainer(Trainer):  # type: ignore[misc]
        """A Trainer that fails at the first non-finite loss and counts the tokens it trains on."""

        tokens_seen = 0

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, *args, **kwargs)
            if not torch.isfinite(loss).all():
                step = self.state.global_step + 1
                raise TrainingError(f"loss is {loss.item()} at step {step}/{self.state.max_steps}; training diverged")
            return loss

    return _CheckedTrainer


def _progress_callback(trainer_ref: list[Any], started: float, losses: list[float]) -> Any:
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            losses.append(float(logs["loss"]))
            elapsed = time.monotonic() - started
            step, total = state.global_step, state.max_steps
            tokens = trainer_ref[0].tokens_seen if trainer_ref else 0
            eta = elapsed / max(step, 1) * (total - step)
            logger.info(
                "train step %d/%d epoch %.2f loss %.4f lr %.2e %.0f tokens/s ETA %.0fs",
                step,
                total,
                state.epoch or 0.0,
                logs["loss"],
                logs.get("learning_rate", float("nan")),
                tokens / max(elapsed, 1e-9),
                eta,
            )

    return _Progress()


def train_lora(
    base_model: str,
    train_rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    params: HuggingFaceBackend,
) -> TrainResult:
    """Fine-tune a LoRA adapter on chat conversations and save it with the tokenizer.

    Args:
        base_model: A resolved local path or hub id of a causal LM with a chat template.
        train_rows: Rows ``{"messages": [{"role": ..., "content": ...}, ...]}`` ending with the assistant turn.
        out_dir: Where the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and tokenizer go.
        params: Hyperparameters: epochs, learning_rate, batch_size, lora_r/alpha/dropout, max_seq_len, seed.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        TrainingError: No usable examples, or the loss became NaN/inf (the message names the step).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainingArguments, set_seed
    from transformers.pytorch_utils import Conv1D

    out_dir = Path(out_dir)
    set_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TrainingError(f"tokenizer of {base_model} has no chat template")

    examples: list[EncodedExample] = []
    for i, row in enumerate(train_rows):
        try:
            encoded = encode_conversation(tokenizer, row["messages"], params.max_seq_len)
        except (KeyError, TypeError) as exc:
            raise TrainingError(f"training row {i} is not a chat conversation: {exc!r}") from exc
        if any(label != IGNORE_INDEX for label in encoded.labels):
            examples.append(encoded)
    dropped = len(train_rows) - len(examples)
    if dropped:
        logger.warning("Dropped %d examples whose reply lies beyond max_seq_len=%d", dropped, params.max_seq_len)
    if not examples:
        raise TrainingError("no training examples")

    base = AutoModelForCausalLM.from_pretrained(base_model)
    modules = {name.rsplit(".", 1)[-1]: module for name, module in base.named_modules()}
    targets = [name for name in LORA_TARGET_MODULES if name in modules]
    lora = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=targets or "all-linear",
        task_type="CAUSAL_LM",
        # GPT-2 keeps its weights in Conv1D layers, stored (in, out); PEFT must transpose them when merging.
        fan_in_fan_out=any(isinstance(modules[name], Conv1D) for name in targets),
        modules_to_save=[name for name in LORA_MODULES_TO_SAVE if name in modules] or None,
    )
    model = get_peft_model(base, lora)
    trainable, total = model.get_nb_trainable_parameters()
    steps_per_epoch = math.ceil(len(examples) / params.batch_size)
    max_steps = steps_per_epoch * params.epochs
    logger.info(
        "LoRA on %s: %d examples, %d epochs x %d steps, batch %d, lr %.1e, r=%d; %d of %d parameters trainable",
        base_model,
        len(examples),
        params.epochs,
        steps_per_epoch,
        params.batch_size,
        params.learning_rate,
        params.lora_r,
        trainable,
        total,
    )

    pad_id = tokenizer.pad_token_id
    losses: list[float] = []
    started = time.monotonic()
    trainer_ref: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="ftops-train-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=params.epochs,
            per_device_train_batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=max(1, max_steps // 20),
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_strategy="steps",
            logging_steps=max(1, max_steps // 20),
            logging_first_step=True,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            seed=params.seed,
            data_seed=params.seed,
        )
        trainer = _make_trainer_class()(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=lambda batch: pad_batch(batch, pad_id),
            callbacks=[_progress_callback(trainer_ref, started, losses)],
        )
        # With tqdm off the Trainer prints each log dict to stdout; our callback logs them instead.
        trainer.remove_callback(PrinterCallback)
        trainer_ref.append(trainer)
        output = trainer.train()
    seconds = time.monotonic() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    result = TrainResult(
        adapter_dir=out_dir,
        steps=int(output.global_step),
        epochs=params.epochs,
        train_examples=len(examples),
        train_tokens=int(trainer.tokens_seen),
        seconds=round(seconds, 2),
        losses=losses,
        first_loss=losses[0] if losses else math.nan,
        final_loss=losses[-1] if losses else math.nan,
    )
    logger.info(
        "Trained %d steps in %.1fs (%d tokens, %.0f tokens/s); loss %.4f -> %.4f; adapter at %s",
        result.steps,
        seconds,
        result.train_tokens,
        result.train_tokens / max(seconds, 1e-9),
        result.first_loss,
        result.final_loss,
        out_dir,
    )
    return result
