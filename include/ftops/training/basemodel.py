"""Build the tiny local base model that stands in for a hub model, since no hub is reachable.

The base is a byte-level BPE tokenizer and a 2-layer, 128-wide GPT-2, both trained here on generic English
found offline: the docstrings of the Python standard library plus a few everyday sentences. Part of the
corpus is wrapped in the chat template (a docstring's first line as the answer to "what does X do?"), so
the special tokens and the turn structure are not untrained when LoRA fine-tuning starts. It knows none of
the FT-Ops tasks; it only gives LoRA a language-shaped starting point, which measurably learns far more
than a randomly initialised model does.

The build writes to a temporary folder beside ``out_dir`` and renames it into place with a marker file, so
a reader never sees half a model; a complete model is reused unless ``force`` is given.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import random
import shutil
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


logger = logging.getLogger(__name__)
MARKER_FILE = "FTOPS_BASE_MODEL.json"
PAD, USER, ASSISTANT, SYSTEM, END = "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, USER, ASSISTANT, SYSTEM, END)

# Each turn is "<|role|>content<|end|>"; no newlines, so the answer's first token is the same in training
# (rendered conversation) and in generation (prompt + sampled tokens).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)
VOCAB_SIZE = 4096  # the LM head dominates the cost of a step; 4k instead of 6k made steps ~1.7x faster
N_POSITIONS = 256
N_EMBD = 128
N_LAYER = 2
N_HEAD = 4
BLOCK_SIZE = 64  # pre-training window; fine-tuning examples are ~30-70 tokens
PRETRAIN_BATCH = 32
PRETRAIN_LR = 3e-3
GENERIC_SENTENCES = 6000  # ~400k chars of everyday English beside the docstrings
MAX_CORPUS_CHARS = 1_000_000  # ~1 MB of docstrings: ~250k tokens, tokenizer training in a few seconds

# 400 steps x 2 048 tokens: measured 225 s (1 thread, 2 cores shared with other work), loss 8.3 -> 3.7. A base
# this size then let LoRA reach 35 % held-out accuracy on city extraction in 200 steps; 60 steps suffice for tests.
DEFAULT_PRETRAIN_STEPS = 400

# Everyday English the docstrings lack (shopping, travel, places, distances, feelings), as simple sentences
# from a few word lists: a real base model knows these words, and without them the tiny model's predictions
# on everyday text stay too flat for LoRA to sharpen. None of it is in the form of an FT-Ops task.
_PEOPLE = (
    "My friend",
    "The customer",
    "Our neighbour",
    "A tourist",
    "My sister",
    "The manager",
    "Everyone",
    "He",
    "She",
)
_PLACES = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Warsaw", "Athens", "Cairo", "Nairobi", "Sydney", "Toronto", "Chicago",
)  # fmt: skip
_THINGS = (
    "the new kettle", "a pair of shoes", "the hotel room", "the train ride", "the museum", "the coffee",
    "the blender", "the jacket", "the concert", "the old bike", "the headphones", "the meal", "the service",
)  # fmt: skip
_FEELINGS = (
    "a satisfying experience", "a disappointing experience", "an unremarkable experience", "a great day",
    "a terrible mistake", "quite ordinary", "excellent value", "a waste of money", "better than expected",
)  # fmt: skip
_SHAPES = (
    "{who} said that {thing} was {feeling}.",
    "{who} travelled to {place} and thought {thing} was {feeling}.",
    "In {place}, {thing} is often mentioned in reviews as {feeling}.",
    "{who} wrote a review that describes {thing} as {feeling}.",
    "The distance to {place} is {n} kilometres, and the last {n2} metres are uphill.",
    "{who} walked {n} km today, more than {who_lower} expected.",
    "{who} lives in {place} and buys {thing} every week.",
    "The text mentions {place}, because {who_lower} visited it last year.",
)


def _generic_text(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        who = rng.choice(_PEOPLE)
        km = rng.randint(1, 999)
        out.append(
            rng.choice(_SHAPES).format(
                who=who,
                who_lower=who.lower(),
                place=rng.choice(_PLACES),
                thing=rng.choice(_THINGS),
                feeling=rng.choice(_FEELINGS),
                n=km,
                n2=rng.randint(10, 9999),
            )
        )
    # a paragraph of several sentences per text, so windows see them in context
    return [" ".join(out[i : i + 6]) for i in range(0, len(out), 6)]


def stdlib_docstrings(max_chars: int = MAX_CORPUS_CHARS) -> list[tuple[str, str]]:
    """Collect docstrings of the Python standard library, in a fixed order.

    Args:
        max_chars: Stop once this many characters are collected.

    Returns:
        ``(qualified name, docstring)`` pairs.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "tkinter"}
    docs: list[tuple[str, str]] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue  # a broken or odd file in someone's stdlib is no reason to fail the build
        module = ".".join(rel.with_suffix("").parts)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
            docs.append((name, doc))
            total += len(doc)
            if total >= max_chars:
                return docs
    return docs


def _chat_samples(docs: list[tuple[str, str]], rng: random.Random) -> list[str]:
    questions = ("What does {name} do?", "Explain {name} briefly.", "Describe {name}.", "What is {name} for?")
    samples = []
    for name, doc in docs:
        first = doc.strip().split("\n\n")[0].replace("\n", " ")
        if 20 <= len(first) <= 300 and rng.random() < 0.5:
            question = rng.choice(questions).format(name=name.rsplit(".", 1)[-1])
            samples.append(f"{USER}{question}{END}{ASSISTANT}{first}{END}")
    return samples


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the FT-Ops special tokens and chat template.

    Args:
        texts: Training text.
        vocab_size: Target vocabulary size, special tokens included.

    Returns:
        The tokenizer, with ``<|pad|>`` as pad, ``<|end|>`` as eos/bos and :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token=PAD,
        eos_token=END,
        bos_token=END,
        extra_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=N_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _blocks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids) - size + 1, size)]


def _batches(blocks: list[list[int]], batch: int, rng: random.Random) -> Iterator[list[list[int]]]:
    while True:
        order = list(range(len(blocks)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            yield [blocks[j] for j in order[i : i + batch]]


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a finished build (its marker file exists)."""
    return (model_dir / MARKER_FILE).is_file()


def build_base_model(
    out_dir: Path,
    *,
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    force: bool = False,
    max_corpus_chars: int = MAX_CORPUS_CHARS,
) -> Path:
    """Train the tokenizer, pre-train the tiny GPT-2 and save both to ``out_dir``.

    Args:
        out_dir: Destination folder; written atomically (temp folder beside it, then renamed).
        seed: Seed for weight initialisation and data order.
        pretrain_steps: Causal-LM optimiser steps of :data:`PRETRAIN_BATCH` windows of :data:`BLOCK_SIZE` tokens.
        force: Rebuild even if ``out_dir`` already holds a complete model.
        max_corpus_chars: Cap on the docstring corpus, in characters.

    Returns:
        ``out_dir``, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.

    Raises:
        RuntimeError: The corpus is too small to form a batch, or pre-training produced a non-finite loss.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out_dir = Path(out_dir)
    if is_complete(out_dir) and not force:
        logger.info("Base model already built at %s; reusing it", out_dir)
        return out_dir

    started = time.monotonic()
    rng = random.Random(seed)
    torch.manual_seed(seed)

    docs = stdlib_docstrings(max_corpus_chars)
    texts = [doc for _, doc in docs] + _generic_text(rng, GENERIC_SENTENCES) + _chat_samples(docs, rng)
    rng.shuffle(texts)
    corpus_chars = sum(map(len, texts))
    logger.info("Corpus: %d texts, %d chars (%d stdlib docstrings)", len(texts), corpus_chars, len(docs))

    tokenizer = build_tokenizer(texts)
    end_id = tokenizer.eos_token_id
    if not isinstance(end_id, int):
        raise RuntimeError(f"tokenizer has no id for {END}")
    stream: list[int] = []
    # The backend tokenizer directly: no special tokens, no warning about texts longer than the model.
    for encoding in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        stream.extend(encoding.ids)
        stream.append(end_id)
    blocks = _blocks(stream, BLOCK_SIZE)
    if len(blocks) < PRETRAIN_BATCH:
        raise RuntimeError(f"corpus too small: {len(blocks)} blocks of {BLOCK_SIZE} tokens")
    logger.info(
        "Tokenizer: %d tokens in vocabulary; corpus is %d tokens, %d blocks (%.1fs)",
        len(tokenizer),
        len(stream),
        len(blocks),
        time.monotonic() - started,
    )

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        bos_token_id=end_id,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
        # No dropout: a 1M-parameter model does not overfit in minutes, and on CPU dropout (which also
        # pushes attention off the fused SDPA kernel) made each training step 10-15x slower.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end_id
    optimiser = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)
    warmup = max(1, pretrain_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    model.train()
    batches = _batches(blocks, PRETRAIN_BATCH, rng)
    log_every = max(1, pretrain_steps // 10)
    losses: list[float] = []
    window_loss, window_start, train_start = 0.0, time.monotonic(), time.monotonic()
    for step in range(1, pretrain_steps + 1):
        input_ids = torch.tensor(next(batches))
        loss = model(input_ids=input_ids, labels=input_ids).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite pre-training loss {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        optimiser.zero_grad(set_to_none=True)
        window_loss += loss.item()
        if step % log_every == 0 or step == pretrain_steps or step == 1:
            n = log_every if step % log_every == 0 else (1 if step == 1 else step % log_every)
            elapsed = time.monotonic() - window_start
            losses.append(window_loss / n)
            logger.info(
                "pretrain step %d/%d loss %.3f %.0f tokens/s",
                step,
                pretrain_steps,
                window_loss / n,
                n * PRETRAIN_BATCH * BLOCK_SIZE / max(elapsed, 1e-9),
            )
            window_loss, window_start = 0.0, time.monotonic()
    pretrain_seconds = time.monotonic() - train_start
    model.eval()

    info: dict[str, Any] = {
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "pretrain_batch": PRETRAIN_BATCH,
        "block_size": BLOCK_SIZE,
        "corpus_chars": corpus_chars,
        "corpus_tokens": len(stream),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "losses": losses,
        "pretrain_seconds": round(pretrain_seconds, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2))
    if out_dir.exists():  # forced, or a stale incomplete folder: move it aside, then swap
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    logger.info(
        "Built base model at %s: %d parameters, loss %.3f -> %.3f, %.1fs",
        out_dir,
        info["parameters"],
        info["first_loss"],
        info["final_loss"],
        info["total_seconds"],
    )
    return out_dir
