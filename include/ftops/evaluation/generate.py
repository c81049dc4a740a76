"""Loading a causal LM for inference and answering prompts by batched greedy decoding.

Batched decoding gives the same answers as one prompt at a time: prompts are padded on the left, position
ids count only real tokens, padding is masked, and a row leaves the batch (its cache rows dropped) as soon
as it emits a stop token, so a long answer does not make the finished rows of its batch keep computing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.core.chat import render_prompt, split_conversation
from ftops.core.stats import percentile

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


logger = logging.getLogger(__name__)


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




def max_positions(loaded: LoadedModel) -> int | None:
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
    loaded: LoadedModel, prompts: Sequence[str], *, batch_size: int = 64, max_new_tokens: int = 48,
    progress: bool = True,
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
        progress: Log a progress line (at most every 5 s, and at the end); off for serving.

    Returns:
        The answers, their token counts, per-prompt latencies and the total generation time.
    """
    tokenizer = loaded.tokenizer
    limit = max_positions(loaded)
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
        if not progress or (now - last_log < 5 and done < len(order)):
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
    return [render_prompt(model.tokenizer, split_conversation(row["messages"])[0]) for row in test_rows]


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
            # one line for the whole sample (below), not a progress line per request
            timed = generate_answers(models[k], [prompts[k][i]], batch_size=1, max_new_tokens=max_new_tokens,
                                     progress=False)  # fmt: skip
            latencies[k].append(timed.latencies_ms[0])
    out = [{"latency_p50_ms": percentile(t, 0.5), "latency_p95_ms": percentile(t, 0.95)} for t in latencies]
    logger.info("Timed %d single requests per model (%d models, interleaved): p50 %s ms", len(rows), len(models),
                ", ".join(f"{o['latency_p50_ms']:.0f}" for o in out))  # fmt: skip
    return out
