"""Evaluate a causal LM (a base model, or a base model plus a LoRA adapter) on a test split.

Test rows are chat conversations like training rows; the final assistant turn is the reference. The model
answers each prompt by batched greedy decoding from the chat template (:func:`generate_answers`), and each
answer is scored against its reference: exact match after :func:`normalise` (accuracy, kept per example so
that two models evaluated on the same rows can be compared pair by pair with :func:`paired_bootstrap`),
corpus BLEU (sacrebleu, 0-100) and mean ROUGE-L F1 (rouge_score, 0-1). Perplexity is that of the reference
reply (with its end-of-turn token) given the prompt, over all reference tokens of the split. Throughput
and cost come from the batched generation time; latency from a fixed sample of requests answered one at a
time, as a request to the served model is.

Batched decoding gives the same answers as one prompt at a time: prompts are padded on the left, position
ids count only real tokens, padding is masked, and a row leaves the batch (its cache rows dropped) as soon
as it emits a stop token, so a long answer does not make the finished rows of its batch keep computing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ftops.core.chat import encode_conversation, pad_batch, split_conversation
from ftops.evaluation.generate import (
    LATENCY_SAMPLE,
    LoadedModel,
    generate_answers,
    max_positions,
    render_prompts,
    time_single_requests,
)
from ftops.evaluation.metrics import EvalResult, score_answers

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)

# Reference perplexity runs in chunks of a fixed size, whatever the generation batch size, so that the
# same rows give the same perplexity to the last digit however they were generated.
_NLL_CHUNK = 16


def _reference_nll(loaded: LoadedModel, conversations: Sequence[Sequence[Mapping[str, str]]]) -> tuple[float, int]:
    import torch

    max_len = max_positions(loaded)
    total, count = 0.0, 0
    for i in range(0, len(conversations), _NLL_CHUNK):
        chunk = conversations[i : i + _NLL_CHUNK]
        encoded = [encode_conversation(loaded.tokenizer, messages, max_len) for messages in chunk]
        batch = pad_batch(encoded, loaded.tokenizer.pad_token_id)  # right padding: positions need no care
        device = loaded.model.device
        with torch.no_grad():
            logits = loaded.model(input_ids=batch["input_ids"].to(device),
                                  attention_mask=batch["attention_mask"].to(device)).logits.cpu()  # fmt: skip
        shifted_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
        targets = batch["labels"][:, 1:].reshape(-1)
        nll = torch.nn.functional.cross_entropy(shifted_logits, targets, ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((targets != -100).sum())
    return total, count


def evaluate(
    model: LoadedModel,
    test_rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 48,
    cost_per_hour: float = 0.0,
    latency_sample: int = LATENCY_SAMPLE,
) -> EvalResult:
    """Generate answers to the test prompts and score them against the reference replies.

    Latency p50/p95 are those of single requests: the first ``latency_sample`` prompts (the same ones for
    any model evaluated on the same rows) are answered again one at a time, each timed from prompt to stop
    token. Within a batch a request's time depends on the batch (size, its neighbours' answers), which is
    not what a latency criterion is about. ``latency_sample=0`` leaves them NaN, for a caller that times
    several models together with :func:`time_single_requests`.

    Cost per 1 000 tokens prices the measured generation time (prompt processing included) at
    ``cost_per_hour`` for the machine doing it and spreads it over the generated tokens::

        cost_per_1k_tokens = cost_per_hour * generation_seconds / 3600 / generated_tokens * 1000
        cost_per_1k_calls  = cost_per_hour * generation_seconds / 3600 / prompts * 1000

    so it holds for batched serving at ``batch_size`` on this machine and its load; with the default price
    0 it is 0 (local compute not priced).

    Args:
        model: From :func:`load_model`.
        test_rows: Rows ``{"messages": [...]}`` whose final assistant turn is the reference.
        batch_size: Prompts generated together (see :func:`generate_answers`).
        max_new_tokens: Generation cap per answer; generation also stops at the end-of-turn token.
        cost_per_hour: Price of an hour of the machine running the model, for ``cost_per_1k_tokens``.
        latency_sample: Prompts timed one at a time for the latency percentiles.

    Returns:
        ``metrics`` with accuracy (0-1), perplexity, bleu (0-100), rouge_l (0-1), latency_p50_ms,
        latency_p95_ms, tokens_per_s, cost_per_1k_tokens, cost_per_1k_calls (batched decode time, priced) and
        n; ``outputs`` and ``correct`` in row order.

    Raises:
        ValueError: ``test_rows`` is empty.
    """
    if not test_rows:
        raise ValueError("no test rows to evaluate")
    if latency_sample < 0:
        raise ValueError(f"latency_sample must be >= 0, got {latency_sample}")
    conversations = [row["messages"] for row in test_rows]
    references = [split_conversation(messages)[1] for messages in conversations]
    prompts = render_prompts(model, test_rows)
    generation = generate_answers(model, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    latency = (time_single_requests([model], test_rows, sample=latency_sample, max_new_tokens=max_new_tokens)[0]
               if latency_sample else {"latency_p50_ms": math.nan, "latency_p95_ms": math.nan})  # fmt: skip
    nll_sum, nll_tokens = _reference_nll(model, conversations)
    scores, correct = score_answers(generation.texts, references)
    tokens = generation.tokens
    metrics = {
        "accuracy": scores["accuracy"],
        "perplexity": math.exp(nll_sum / nll_tokens) if nll_tokens else math.nan,
        "bleu": scores["bleu"],
        "rouge_l": scores["rouge_l"],
        **latency,
        "tokens_per_s": tokens / max(generation.seconds, 1e-9),
        "cost_per_1k_tokens": cost_per_hour * generation.seconds / 3600 / max(tokens, 1) * 1000,
        "cost_per_1k_calls": cost_per_hour * generation.seconds / 3600 / len(prompts) * 1000,
        "n": float(len(prompts)),
    }
    logger.info(
        "Evaluated %s on %d examples: accuracy %.3f, perplexity %.2f, BLEU %.1f, ROUGE-L %.3f, p50 %.0f ms, "
        "%.0f tokens/s",
        model.name,
        len(prompts),
        metrics["accuracy"],
        metrics["perplexity"],
        metrics["bleu"],
        metrics["rouge_l"],
        metrics["latency_p50_ms"],
        metrics["tokens_per_s"],
    )
    return EvalResult(metrics=metrics, outputs=generation.texts, correct=correct)
