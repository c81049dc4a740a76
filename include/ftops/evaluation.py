"""Evaluate a causal LM (a base model, or a base model plus a LoRA adapter) on a test split.

Test rows are chat conversations like training rows; the final assistant turn is the reference. The model
answers each prompt by batched greedy generation from the chat template, and the answer is scored against
the reference: exact match after :func:`normalise` (accuracy), corpus BLEU (sacrebleu, 0-100) and mean
ROUGE-L F1 (rouge_score, 0-1). Perplexity is that of the reference reply (with its end-of-turn token) given
the prompt, over all reference tokens of the split. Latency and throughput come from the generation batches.
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.training import encode_conversation, pad_batch, split_conversation

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "perplexity",
    "bleu",
    "rouge_l",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_s",
    "n",
)
_EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for evaluation: eval mode, tokenizer padding on the left for batched generation."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation (keys in :data:`METRIC_KEYS`) and the generated answers in row order."""

    metrics: dict[str, float]
    outputs: list[str] = field(default_factory=list)


def normalise(text: str) -> str:
    """Lowercase, collapse runs of whitespace and strip punctuation at both ends.

    Args:
        text: An answer or a reference.

    Returns:
        The normalised text, e.g. ``"  Paris, so  Paris. "`` -> ``"paris, so paris"``.
    """
    return re.sub(r"\s+", " ", text.lower()).strip().strip(_EDGE_PUNCT).strip()


def load_model(base_model: str, adapter_dir: str | Path | None = None) -> LoadedModel:
    """Load a base model, optionally with a LoRA adapter merged in, for evaluation.

    Args:
        base_model: A resolved local path or hub id.
        adapter_dir: A PEFT adapter folder saved by :func:`ftops.training.train_lora`; its tokenizer is used
            when it holds one.

    Returns:
        The model in eval mode with its tokenizer (left padding).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_source = base_model
    if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file():
        tokenizer_source = str(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model)
    name = base_model
    if adapter_dir is not None:
        from peft import PeftModel

        # Merged, so generation costs what the base costs; the adapter folder is left unchanged.
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        name = f"{base_model}+{adapter_dir}"
    model.eval()
    stops = {tokenizer.eos_token_id}
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
        stops.add(end_id)
    logger.info("Loaded %s for evaluation", name)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        stop_token_ids=tuple(sorted(s for s in stops if s is not None)),
    )


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _reference_nll(loaded: LoadedModel, conversations: Sequence[Sequence[Mapping[str, str]]]) -> tuple[float, int]:
    import torch

    max_len = getattr(loaded.model.config, "n_positions", None) or getattr(
        loaded.model.config, "max_position_embeddings", None
    )
    encoded = [encode_conversation(loaded.tokenizer, messages, max_len) for messages in conversations]
    batch = pad_batch(encoded, loaded.tokenizer.pad_token_id)  # right padding: positions need no care
    with torch.no_grad():
        logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    targets = batch["labels"][:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(shifted_logits, targets, ignore_index=-100, reduction="sum")
    return float(nll), int((targets != -100).sum())


def evaluate(
    model: LoadedModel,
    test_rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 48,
) -> EvalResult:
    """Generate answers to the test prompts and score them against the reference replies.

    Latency is per example: each batch's generation wall time divided by its size, so p50/p95 describe
    batched serving, not one request alone.

    Args:
        model: From :func:`load_model`.
        test_rows: Rows ``{"messages": [...]}`` whose final assistant turn is the reference.
        batch_size: Prompts generated together.
        max_new_tokens: Generation cap per answer; generation also stops at the end-of-turn token.

    Returns:
        ``metrics`` with accuracy (0-1), perplexity, bleu (0-100), rouge_l (0-1), latency_p50_ms,
        latency_p95_ms, tokens_per_s and n; ``outputs`` holds the answers in row order.

    Raises:
        ValueError: ``test_rows`` is empty.
    """
    import sacrebleu
    import torch
    from rouge_score import rouge_scorer

    if not test_rows:
        raise ValueError("no test rows to evaluate")
    tokenizer, lm = model.tokenizer, model.model
    conversations = [row["messages"] for row in test_rows]
    splits = [split_conversation(messages) for messages in conversations]
    references = [reply for _, reply in splits]

    outputs: list[str] = []
    latencies: list[float] = []
    generated_tokens = 0
    generation_seconds = 0.0
    nll_sum, nll_tokens = 0.0, 0
    started = time.monotonic()
    n_batches = math.ceil(len(splits) / batch_size)
    for b in range(n_batches):
        chunk = splits[b * batch_size : (b + 1) * batch_size]
        prompts = [
            tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) for turns, _ in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        t0 = time.monotonic()
        with torch.no_grad():
            out = lm.generate(  # type: ignore[operator]
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(model.stop_token_ids),
                pad_token_id=tokenizer.pad_token_id,
            )
        dt = time.monotonic() - t0
        generation_seconds += dt
        latencies.extend([dt * 1000 / len(chunk)] * len(chunk))
        new = out[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            n = len(row)
            for i, token in enumerate(row):
                if token in model.stop_token_ids:
                    n = i + 1
                    break
            generated_tokens += n
            outputs.append(str(tokenizer.decode(row[:n], skip_special_tokens=True)).strip())
        nll, count = _reference_nll(model, conversations[b * batch_size : (b + 1) * batch_size])
        nll_sum, nll_tokens = nll_sum + nll, nll_tokens + count
        done = min((b + 1) * batch_size, len(splits))
        elapsed = time.monotonic() - started
        logger.info(
            "eval %d/%d examples, %.1f examples/s, %.0f tokens/s, ETA %.0fs",
            done,
            len(splits),
            done / max(elapsed, 1e-9),
            generated_tokens / max(generation_seconds, 1e-9),
            elapsed / done * (len(splits) - done),
        )

    correct = sum(normalise(o) == normalise(r) for o, r in zip(outputs, references, strict=True))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, references, strict=True)]
    metrics = {
        "accuracy": correct / len(outputs),
        "perplexity": math.exp(nll_sum / nll_tokens) if nll_tokens else math.nan,
        "bleu": float(sacrebleu.corpus_bleu(outputs, [references]).score),
        "rouge_l": sum(rouge) / len(rouge),
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p95_ms": _percentile(latencies, 0.95),
        "tokens_per_s": generated_tokens / max(generation_seconds, 1e-9),
        "n": float(len(outputs)),
    }
    logger.info(
        "Evaluated %s on %d examples: accuracy %.3f, perplexity %.2f, BLEU %.1f, ROUGE-L %.3f, p50 %.0f ms",
        model.name,
        len(outputs),
        metrics["accuracy"],
        metrics["perplexity"],
        metrics["bleu"],
        metrics["rouge_l"],
        metrics["latency_p50_ms"],
    )
    return EvalResult(metrics=metrics, outputs=outputs)
