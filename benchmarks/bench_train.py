"""Benchmark training throughput: the configured trainer (``ftops.training.fine_tune``) vs a plain Trainer.

Usage::

    . scripts/env.sh && python benchmarks/bench_train.py [--n 320] [--epochs 3] [--batch-size 16] [--repeat 2] \
        [--method full|lora]

Model: the local base model (``local:tiny-gpt2`` under ``FTOPS_HOME``, built first if missing: a few minutes).
Data: ``--n`` clean simulator chat examples of ``--task`` (prompt + reference reply). Every method trains
the same examples with the same ``--method`` (``full``, as the shipped config trains the local model: every
weight; or ``lora``: the same rank, alpha, targets, ``ln_f`` saved in full), the same optimiser settings and
the same number of optimiser steps (``ceil(n / batch) * epochs``: 60 by default).

Methods, run ``--repeat`` times round-robin, reported by the median tokens/s:

* configured: :func:`ftops.training.fine_tune` itself: prompt and reply tokenised separately, loss only on
  the reply, the LM head applied only where a label is (``reply_loss``), each batch right-padded to its
  longest example (``padding_free: auto`` pads under sdpa attention); its ``TrainResult.train_tokens / seconds``;
* configured, logits at every position: the same, but the model computes logits for the prompt tokens too
  and its own loss ignores them (what ``fine_tune`` does for a model without a ``logits_to_keep`` mask);
* configured, padding-free: the same with ``padding_free: on``: each batch is one packed row with
  restarting ``position_ids`` (sdpa then masks a dense n x n block-diagonal);
* plain Trainer, padded to max_length: ``transformers.Trainer`` on the chat-template-rendered text tokenised
  with ``padding="max_length"`` (``max_seq_len``), ``DataCollatorForLanguageModeling(mlm=False)``, the usual
  recipe (loss on every non-pad token, the prompt included);
* plain Trainer, dynamic padding: the same but the collator pads each batch to its longest example, to
  separate what padding costs from the rest.

Tokens/s counts real (non-pad) tokens, the ``attention_mask`` sum of every batch trained on, over the time
from building the Trainer to the end of ``train()`` (as ``fine_tune`` measures; model loading excluded).
Torch runs on one thread (2 shared cores). CPU only: no MFU figure.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from ftops_dev.simulate import clean_chat_rows  # noqa: E402

import ftops.training.hf as hf  # noqa: E402
from ftops.training.hf import LORA_MODULES_TO_SAVE, LORA_TARGET_MODULES, fine_tune  # noqa: E402

Run = tuple[int, float, int]  # real tokens, seconds, padded tokens computed


def configured(base: str, rows: list[dict[str, Any]], params: Any, reply_logits: bool = True) -> Run:
    """``fine_tune`` with ``params`` (by default its batches are padded to their longest example)."""
    from unittest import mock

    probe = hf.supports_reply_logits if reply_logits else lambda *_: False
    with (
        tempfile.TemporaryDirectory(prefix="bench-train-") as out,
        mock.patch.object(hf, "supports_reply_logits", probe),
    ):
        result = fine_tune(base, rows, Path(out), params)
    return result.train_tokens, result.seconds, -1


def plain_trainer(base: str, rows: list[dict[str, Any]], params: Any, pad_to_max: bool) -> Run:
    """A plain ``transformers.Trainer`` (+ PEFT LoRA) recipe on the rendered text, LM collator, same settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.pytorch_utils import Conv1D

    set_seed(params.seed)
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    texts = [str(tok.apply_chat_template(r["messages"], tokenize=False)) for r in rows]
    padding: Any = "max_length" if pad_to_max else False
    enc = tok(texts, add_special_tokens=False, truncation=True, max_length=params.max_seq_len, padding=padding)
    data = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]

    model = AutoModelForCausalLM.from_pretrained(base)
    modules = {name.rsplit(".", 1)[-1]: module for name, module in model.named_modules()}
    targets = [name for name in LORA_TARGET_MODULES if name in modules]
    lora = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM",
                      fan_in_fan_out=any(isinstance(modules[name], Conv1D) for name in targets),
                      modules_to_save=[name for name in LORA_MODULES_TO_SAVE if name in modules])  # fmt: skip
    if params.method == "lora":
        model = get_peft_model(model, lora)
    max_steps = math.ceil(len(rows) / params.batch_size) * params.epochs
    counts = {"real": 0, "padded": 0}

    class Counting(Trainer):  # type: ignore[misc]
        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
            counts["real"] += int(inputs["attention_mask"].sum())
            counts["padded"] += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *args, **kwargs)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=params.epochs, per_device_train_batch_size=params.batch_size,
            learning_rate=params.learning_rate, lr_scheduler_type="linear", warmup_steps=max(1, max_steps // 20),
            weight_decay=0.0, max_grad_norm=1.0, logging_strategy="steps", logging_steps=max(1, max_steps // 20),
            logging_first_step=True, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
            dataloader_pin_memory=False, use_cpu=True, seed=params.seed, data_seed=params.seed,
        )  # fmt: skip
        trainer = Counting(model=model, args=args, train_dataset=data,
                           data_collator=DataCollatorForLanguageModeling(tok, mlm=False))  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # as fine_tune does: no log dicts on stdout
        output = trainer.train()
    seconds = time.monotonic() - started
    if output.global_step != max_steps:
        raise RuntimeError(f"plain Trainer ran {output.global_step} steps, expected {max_steps}")
    return counts["real"], seconds, counts["padded"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=320, help="training examples")
    parser.add_argument("--task", default="city_extraction")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    if not os.environ.get("FTOPS_HOME"):
        os.environ["FTOPS_HOME"] = str(Path(tempfile.gettempdir()) / "ftops-bench-eval")
    from ftops.core.config import LOCAL_BASE_MODEL, HuggingFaceBackend, resolve_base_model
    from ftops.training.basemodel import build_base_model

    base = str(build_base_model(Path(resolve_base_model(LOCAL_BASE_MODEL))))
    params = HuggingFaceBackend(method=args.method, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    rows = clean_chat_rows(args.task, args.n, args.seed)
    steps = math.ceil(len(rows) / params.batch_size) * params.epochs
    lora_or_full = f"LoRA r={params.lora_r} alpha={params.lora_alpha}" if args.method == "lora" else "all weights"
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[0]
    print(f"{len(rows)} {args.task} examples, {steps} optimiser steps of batch {params.batch_size}, "
          f"max_seq_len {params.max_seq_len}, {lora_or_full}, "
          f"torch threads {torch.get_num_threads()}, load before {load_before}")  # fmt: skip

    methods: dict[str, Callable[[], Run]] = {
        "configured (`fine_tune`)": lambda: configured(base, rows, params),
        "configured, logits at every position": lambda: configured(base, rows, params, reply_logits=False),
        "configured, padding-free (`padding_free: on`)": lambda: configured(
            base, rows, params.model_copy(update={"padding_free": "on"})
        ),
        "plain Trainer, padded to max_length": lambda: plain_trainer(base, rows, params, pad_to_max=True),
        "plain Trainer, dynamic padding": lambda: plain_trainer(base, rows, params, pad_to_max=False),
    }
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    for i in range(args.repeat):
        for name, method in methods.items():
            runs[name].append(method())
            real, sec, _ = runs[name][-1]
            print(f"  repeat {i + 1}: {name}: {real} tokens in {sec:.2f} s = {real / sec:.0f} tokens/s", flush=True)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[0]

    rate = {name: statistics.median(real / sec for real, sec, _ in r) for name, r in runs.items()}
    baseline = rate["plain Trainer, padded to max_length"]
    print(f"\nload {load_before} -> {load_after}\n")
    print("| method | real tokens | padded tokens computed | median s | tokens/s (median) | vs plain, max_length |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        real, _, padded = r[-1]
        sec = statistics.median(s for _, s, _ in r)
        padded_txt = "batch-longest" if padded < 0 else str(padded)
        print(f"| {name} | {real} | {padded_txt} | {sec:.2f} | {rate[name]:.0f} | {rate[name] / baseline:.2f}× |")


if __name__ == "__main__":
    main()
