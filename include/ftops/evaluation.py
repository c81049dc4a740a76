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
import re
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftops.training import encode_conversation, pad_batch, split_conversation

if TYPE_CHECKING:
    import torch
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
    "cost_per_1k_tokens",
    "n",
)
_EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019"
# Reference perplexity runs in chunks of a fixed size, whatever the generation batch size, so that the
# same rows give the same perplexity to the last digit however they were generated.
_NLL_CHUNK = 16


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for evaluation: eval mode, tokenizer padding on the left for batched generation."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Generation:
    """Greedy answers to a list of prompts, in prompt order, with what they cost to produce.

    ``latencies_ms[i]`` is the time from the start of prompt ``i``'s batch (prompt processing included) to
    the step that produced its last token: the latency a request sees when served in a batch of that size.
    ``seconds`` is the wall time of all batches; ``tokens`` counts generated tokens, stop tokens included.
    """

    texts: list[str]
    token_counts: list[int]
    latencies_ms: list[float]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation (keys in :data:`METRIC_KEYS`), answers and per-example correctness in row order."""

    metrics: dict[str, float]
    outputs: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)


def normalise(text: str) -> str:
    """Lowercase, collapse runs of whitespace and strip punctuation at both ends.

    Args:
        text: An answer or a reference.

    Returns:
        The normalised text, e.g. ``"  Paris, so  Paris. "`` -> ``"paris, so paris"``.
    """
    return re.sub(r"\s+", " ", text.lower()).strip().strip(_EDGE_PUNCT).strip()


def paired_bootstrap(
    candidate_correct: Sequence[bool] | np.ndarray,
    baseline_correct: Sequence[bool] | np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Confidence interval of the accuracy difference of two models scored on the same examples.

    Each resample draws example indices with replacement and takes the mean of (candidate - baseline) over
    them, so an example is always drawn for both models together (a paired bootstrap): what the two models
    have in common, such as the examples both find easy, cancels out. The interval is the percentile
    interval of the resampled means.

    Args:
        candidate_correct: Per-example correctness (bool or 0/1) of the candidate.
        baseline_correct: The baseline's, on the same examples in the same order.
        resamples: Bootstrap resamples.
        confidence: Two-sided level; the lower bound is the ``(1 - confidence) / 2`` quantile.
        seed: Seed of the resampling (the same inputs and seed give the same interval).

    Returns:
        ``(diff, low, high)``: the observed accuracy difference and the interval's bounds.

    Raises:
        ValueError: The sequences are empty or of different lengths, or ``resamples``/``confidence`` are
            out of range.
    """
    c = np.asarray(candidate_correct, dtype=np.float64)
    b = np.asarray(baseline_correct, dtype=np.float64)
    if c.ndim != 1 or c.shape != b.shape or c.size == 0:
        raise ValueError(f"need two equally long, non-empty 1-d sequences, got shapes {c.shape} and {b.shape}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    d = c - b
    n = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, 4_000_000 // n)  # index blocks of at most ~32 MB
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(d.mean()), float(low), float(high)


def load_model(base_model: str, weights_dir: str | Path | None = None) -> LoadedModel:
    """Load a base model, optionally with trained weights, for evaluation.

    Args:
        base_model: A resolved local path or hub id.
        weights_dir: What :func:`ftops.training.fine_tune` saved: a PEFT adapter folder (merged into the base)
            or a fully fine-tuned model folder (loaded instead of the base). Its tokenizer is used when it
            holds one.

    Returns:
        The model in eval mode with its tokenizer (left padding).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = Path(weights_dir) if weights_dir is not None else None
    tokenizer_source = base_model
    if weights is not None and (weights / "tokenizer_config.json").is_file():
        tokenizer_source = str(weights)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = base_model
    adapter = weights is not None and (weights / "adapter_config.json").is_file()
    if weights is not None and not adapter:
        model = AutoModelForCausalLM.from_pretrained(str(weights))  # a full fine-tune
        name = f"{base_model} fully fine-tuned ({weights})"
    else:
        model = AutoModelForCausalLM.from_pretrained(base_model)
    if adapter:
        from peft import PeftModel

        # Merged, so generation costs what the base costs; the adapter folder is left unchanged.
        model = PeftModel.from_pretrained(model, str(weights)).merge_and_unload()
        name = f"{base_model}+{weights}"
    model.eval()
    if torch.cuda.is_available():
        model.to(torch.device("cuda"))  # type: ignore[arg-type]
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

    max_len = _max_positions(loaded)
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


def _max_positions(loaded: LoadedModel) -> int | None:
    config = loaded.model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _greedy_batch(
    loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
) -> tuple[list[list[int]], list[float]]:
    """Greedy-decode one left-padded batch; each row stops at its first stop token (which it keeps).

    What ``model.generate(do_sample=False)`` computes with a plain generation config, with one difference
    that matters for speed only: a finished row is removed from the batch and its key/value cache, instead
    of being carried to the end on padding. Returns each row's tokens and the seconds from the batch's
    start to the step that produced the row's last token.
    """
    import torch
    from transformers import DynamicCache

    started = time.perf_counter()
    lm = loaded.model
    stops = torch.tensor(loaded.stop_token_ids, dtype=torch.long)
    size = input_ids.size(0)
    tokens: list[list[int]] = [[] for _ in range(size)]
    finished_at = [0.0] * size
    rows = torch.arange(size)  # batch position -> row of this batch still decoding (on the CPU)
    cache = DynamicCache(config=lm.config)
    device = lm.device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a left-padded prompt sees the positions it would see alone.
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        for step in range(max_new_tokens):
            logits = lm(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
            next_ids = logits.float().argmax(dim=-1).cpu()
            now = time.perf_counter() - started
            for row, token in zip(rows.tolist(), next_ids.tolist(), strict=True):
                tokens[row].append(token)
            done = torch.isin(next_ids, stops)
            if step == max_new_tokens - 1:
                done = torch.ones_like(done)
            for row in rows[done].tolist():
                finished_at[row] = now
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            if keep.numel() < rows.numel():
                on_device = keep.to(device)
                cache.batch_select_indices(on_device)
                rows, next_ids, mask, positions = rows[keep], next_ids[keep], mask[on_device], positions[on_device]
            ids = next_ids[:, None].to(device)
            mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=1)
            positions = positions[:, -1:] + 1
    return tokens, finished_at


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask`` (whatever the tokenizer's side)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def generate_answers(
    loaded: LoadedModel, prompts: Sequence[str], *, batch_size: int = 64, max_new_tokens: int = 48
) -> Generation:
    """Answer rendered prompts by batched greedy decoding.

    Prompts are sorted by length before batching (less padding) and the answers returned in prompt order.
    A prompt longer than the model's context minus ``max_new_tokens`` keeps its last tokens (a warning
    counts them). ``batch_size=1`` decodes one prompt at a time through the same code.

    Args:
        loaded: From :func:`load_model`.
        prompts: Prompts already rendered with the chat template's generation prompt.
        batch_size: Prompts decoded together.
        max_new_tokens: Cap per answer; an answer also ends at its first stop token.

    Returns:
        The answers, their token counts, per-prompt latencies and the total generation time.
    """
    tokenizer = loaded.tokenizer
    limit = _max_positions(loaded)
    room = None if limit is None else max(1, limit - max_new_tokens)
    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    cut = sum(room is not None and len(ids) > room for ids in encoded)
    if cut:
        logger.warning("%d prompts are longer than %d tokens: keeping their last %d tokens", cut, room, room)
        encoded = [ids[-room:] if room is not None else ids for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id will do
    texts, counts, latencies = [""] * len(prompts), [0] * len(prompts), [0.0] * len(prompts)
    seconds, generated = 0.0, 0
    started = last_log = time.monotonic()
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        input_ids, attention_mask = _left_pad([encoded[i] for i in batch], pad_id)
        t0 = time.perf_counter()
        tokens, finished_at = _greedy_batch(loaded, input_ids, attention_mask, max_new_tokens)
        seconds += time.perf_counter() - t0
        for i, row, at in zip(batch, tokens, finished_at, strict=True):
            texts[i] = str(tokenizer.decode(row, skip_special_tokens=True)).strip()
            counts[i] = len(row)
            latencies[i] = at * 1000
            generated += len(row)
        done = min(b + batch_size, len(order))
        now = time.monotonic()
        if now - last_log < 5 and done < len(order):
            continue  # a progress line every 5 s at most
        last_log, elapsed = now, now - started
        logger.info(
            "generate %d/%d prompts, %.1f prompts/s, %.0f tokens/s, ETA %.0fs",
            done,
            len(order),
            done / max(elapsed, 1e-9),
            generated / max(seconds, 1e-9),
            elapsed / done * (len(order) - done),
        )
    return Generation(texts=texts, token_counts=counts, latencies_ms=latencies, seconds=seconds)


def render_prompts(model: LoadedModel, test_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows' prompt turns rendered with the model's chat template and its generation prompt."""
    return [
        str(model.tokenizer.apply_chat_template(split_conversation(row["messages"])[0], tokenize=False,
                                                add_generation_prompt=True))
        for row in test_rows
    ]  # fmt: skip


# Prompts answered one at a time for the latency percentiles (the same first ones for every model).
LATENCY_SAMPLE = 32


def time_single_requests(
    models: Sequence[LoadedModel], test_rows: Sequence[Mapping[str, Any]], *, sample: int = LATENCY_SAMPLE,
    max_new_tokens: int = 48,
) -> list[dict[str, float]]:
    """Latency p50/p95 (ms) of single requests to each model, timed interleaved on the same prompts.

    Prompt ``i`` of the first ``sample`` rows goes to every model in turn, the order rotated per prompt, so
    load on the machine that comes and goes during the measurement falls on all models alike (timed one
    model after the other, a candidate measured under load was compared with a baseline measured idle).

    Returns:
        ``{"latency_p50_ms", "latency_p95_ms"}`` per model, in ``models`` order.
    """
    rows = list(test_rows[:sample])
    prompts = [render_prompts(m, rows) for m in models]
    latencies: list[list[float]] = [[] for _ in models]
    for i in range(len(rows)):
        for k in (i + j for j in range(len(models))):
            k %= len(models)
            timed = generate_answers(models[k], [prompts[k][i]], batch_size=1, max_new_tokens=max_new_tokens)
            latencies[k].append(timed.latencies_ms[0])
    return [{"latency_p50_ms": _percentile(t, 0.5), "latency_p95_ms": _percentile(t, 0.95)} for t in latencies]


def score_answers(outputs: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], list[bool]]:
    """Accuracy (exact match after :func:`normalise`), corpus BLEU and mean ROUGE-L F1 of answers.

    Returns:
        ``{"accuracy", "bleu", "rouge_l"}`` and the per-example exact-match results.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    correct = [normalise(o) == normalise(r) for o, r in zip(outputs, references, strict=True)]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, references, strict=True)]
    return {
        "accuracy": sum(correct) / len(correct),
        "bleu": float(sacrebleu.corpus_bleu(list(outputs), [list(references)]).score),
        "rouge_l": sum(rouge) / len(rouge),
    }, correct


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
        latency_p95_ms, tokens_per_s, cost_per_1k_tokens and n; ``outputs`` and ``correct`` in row order.

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
