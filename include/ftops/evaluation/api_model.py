"""Evaluate a model served by an OpenAI-compatible API through chat completions, scored like a local model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ftops.core.stats import percentile

if TYPE_CHECKING:
    import openai

    from ftops.evaluation.metrics import EvalResult


log = logging.getLogger(__name__)


def evaluate_api_model(
    client: openai.OpenAI, model: str, test_rows: Sequence[Mapping[str, Any]],
    price: Callable[[int, int], float] | None = None, concurrency: int = 8,
) -> EvalResult:
    """Answer the test prompts with an API model through chat completions and score them like a local model.

    Perplexity is NaN: a chat completion returns no reference log-likelihood. Latency is each request's wall
    time, network included. With ``price`` (``(prompt_tokens, completion_tokens) -> cost`` of one call: an
    upstream version's token prices) the cost of the calls made is reported as ``cost_per_1k_calls`` and
    ``cost_per_1k_tokens`` (generated tokens); without it both are NaN (the provider's prices are unknown).
    ``concurrency`` requests are in flight at once (a hosted model takes a second or so per call: one at a time,
    an eval set of 500 rows would take minutes); the answers keep the rows' order.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ftops.core.chat import split_conversation
    from ftops.core.openai_api import chat_complete
    from ftops.evaluation.metrics import EvalResult, score_answers

    if not test_rows:
        raise ValueError("no test rows to evaluate")
    conversations = [split_conversation(row["messages"]) for row in test_rows]
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(conversations))), thread_name_prefix="api-eval") as pool:
        replies = list(pool.map(lambda c: chat_complete(client, model, c[0], temperature=0, max_tokens=64), conversations))
    outputs, references, latencies, tokens, generated, cost = [], [], [], 0, 0, 0.0
    for (_, reference), reply in zip(conversations, replies, strict=True):
        outputs.append(reply.text.strip())
        references.append(reference)
        latencies.append(reply.latency_ms)
        tokens += reply.usage_tokens or 0
        generated += reply.completion_tokens
        cost += price(reply.prompt_tokens, reply.completion_tokens) if price is not None else math.nan
    scores, correct = score_answers(outputs, references)
    metrics = {
        **scores,
        "perplexity": math.nan,
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p95_ms": percentile(latencies, 0.95),
        "tokens_per_s": tokens / max(sum(latencies) / 1000, 1e-9),
        "cost_per_1k_tokens": cost / generated * 1000 if generated else math.nan,
        "cost_per_1k_calls": cost / len(outputs) * 1000,
        "n": float(len(outputs)),
    }
    log.info("Evaluated %s on %d examples: accuracy %.3f, BLEU %.1f, ROUGE-L %.3f, p50 %.0f ms", model,
             len(outputs), metrics["accuracy"], metrics["bleu"], metrics["rouge_l"], metrics["latency_p50_ms"])  # fmt: skip
    return EvalResult(metrics=metrics, outputs=outputs, correct=correct)
