"""Benchmark evaluation generation: batched greedy decoding (the evaluator's path) vs one prompt at a time.

Usage::

    . scripts/env.sh && python benchmarks/bench_eval.py [--n 100] [--batch-sizes 16,32,64] [--repeat 3]
        [--finetune-epochs 10]

Model: the local base model (``local:tiny-gpt2`` under ``FTOPS_HOME``, built first if missing: a few
minutes), optionally also the same base with a LoRA adapter trained here (``--finetune-epochs``), whose
answers follow the reply template and so are longer and evenly long. Data: ``--n`` clean prompts of the
simulator's ``--task`` with their reference replies.

Methods, each timed ``--repeat`` times round-robin after one warm-up, reported by the median:

* ``generate``, one by one: ``model.generate(do_sample=False)`` on each unpadded prompt, the naive loop;
* evaluator, one by one: :func:`ftops.evaluation.generate_answers` with ``batch_size=1`` (same code as
  batched, batches of one);
* ``generate``, batched 16: the evaluator before this change (left-padded batches of 16 through
  ``model.generate``; finished rows ride along on padding until the batch's longest answer ends);
* evaluator, batched: ``generate_answers`` at each ``--batch-sizes`` (finished rows leave the batch).

Tokens/s counts generated tokens up to and including each answer's stop token, over generation wall time
(prompt processing included). Every method's answers are compared with the naive loop's; then the full
:func:`ftops.evaluation.evaluate` runs batched and one by one and its quality metrics are compared.
Torch runs on one thread, as evaluation does in the tests on these shared 2-core machines.
"""

from __future__ import annotations

import argparse
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

from ftops.core.chat import split_conversation  # noqa: E402
from ftops.evaluation.evaluate import evaluate  # noqa: E402
from ftops.evaluation.generate import LoadedModel, generate_answers, load_model  # noqa: E402

Answers = tuple[list[str], int]  # texts, generated tokens


def hf_generate(loaded: LoadedModel, prompts: list[str], batch_size: int, max_new: int) -> Answers:
    """``model.generate`` on left-padded batches (``batch_size=1``: no padding), cut after the stop token."""
    import torch

    tok, texts, tokens = loaded.tokenizer, [], 0
    tok.padding_side = "left"
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = loaded.model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id,
                                        eos_token_id=list(loaded.stop_token_ids))  # fmt: skip
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in loaded.stop_token_ids), len(row))
            tokens += cut
            texts.append(str(tok.decode(row[:cut], skip_special_tokens=True)).strip())
    return texts, tokens


def evaluator(loaded: LoadedModel, prompts: list[str], batch_size: int, max_new: int) -> Answers:
    gen = generate_answers(loaded, prompts, batch_size=batch_size, max_new_tokens=max_new)
    return gen.texts, gen.tokens


def bench_model(label: str, loaded: LoadedModel, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    prompts = [str(loaded.tokenizer.apply_chat_template(split_conversation(r["messages"])[0], tokenize=False,
                                                        add_generation_prompt=True)) for r in rows]  # fmt: skip
    methods: dict[str, Callable[[], Answers]] = {
        "`generate`, one by one": lambda: hf_generate(loaded, prompts, 1, args.max_new_tokens),
        "evaluator, one by one": lambda: evaluator(loaded, prompts, 1, args.max_new_tokens),
        "`generate`, batched 16 (before)": lambda: hf_generate(loaded, prompts, 16, args.max_new_tokens),
    }
    for b in args.batch_sizes:
        methods[f"evaluator, batched {b}"] = lambda b=b: evaluator(loaded, prompts, b, args.max_new_tokens)
    # warm-up on a few prompts (first calls pay for lazy initialisation)
    generate_answers(loaded, prompts[:8], batch_size=8, max_new_tokens=args.max_new_tokens)
    hf_generate(loaded, prompts[:2], 1, args.max_new_tokens)

    seconds: dict[str, list[float]] = {name: [] for name in methods}
    answers: dict[str, Answers] = {}
    for _ in range(args.repeat):
        for name, run in methods.items():
            start = time.perf_counter()
            answers[name] = run()
            seconds[name].append(time.perf_counter() - start)
    reference_texts, reference_tokens = answers["`generate`, one by one"]
    naive = statistics.median(seconds["`generate`, one by one"])
    own_single = statistics.median(seconds["evaluator, one by one"])
    lengths = [len(loaded.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in reference_texts]
    print(f"\n### {label}: {len(prompts)} prompts, {reference_tokens} generated tokens "
          f"(answers of {min(lengths)}-{max(lengths)} tokens of text, median {statistics.median(lengths):.0f})")  # fmt: skip
    print("\n| method | median s (range) | tokens/s | vs `generate` one by one | vs evaluator one by one | same answers |")
    print("|---|---|---|---|---|---|")
    for name, runs in seconds.items():
        med = statistics.median(runs)
        texts, tokens = answers[name]
        same = "yes" if texts == reference_texts and tokens == reference_tokens else "**no**"
        print(f"| {name} | {med:.2f} ({min(runs):.2f}-{max(runs):.2f}) | {tokens / med:.0f} | {naive / med:.1f}× "
              f"| {own_single / med:.1f}× | {same} |")  # fmt: skip

    best = max(args.batch_sizes)
    batched = evaluate(loaded, rows, batch_size=best, max_new_tokens=args.max_new_tokens)
    single = evaluate(loaded, rows, batch_size=1, max_new_tokens=args.max_new_tokens)
    keys = ("accuracy", "perplexity", "bleu", "rouge_l", "n")
    equal = all(batched.metrics[k] == single.metrics[k] for k in keys) and batched.outputs == single.outputs
    print(f"\n`evaluate` batched {best} vs one by one: quality metrics identical: {'yes' if equal else '**no**'}")
    for k in keys:
        print(f"- {k}: {batched.metrics[k]:.6g} vs {single.metrics[k]:.6g}")
    for k in ("tokens_per_s", "latency_p50_ms", "latency_p95_ms"):
        print(f"- {k}: {batched.metrics[k]:.1f} vs {single.metrics[k]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="test prompts")
    parser.add_argument("--task", default="city_extraction")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64])
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the evaluator's default")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="also train a LoRA adapter for this many epochs on 400 other prompts and benchmark it")  # fmt: skip
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    if not os.environ.get("FTOPS_HOME"):
        os.environ["FTOPS_HOME"] = str(Path(tempfile.gettempdir()) / "ftops-bench-eval")
    from ftops.core.config import LOCAL_BASE_MODEL, HuggingFaceBackend, resolve_base_model
    from ftops.training.basemodel import build_base_model

    with open("/proc/loadavg") as f:
        print(f"load before: {f.read().strip()}; torch threads: {torch.get_num_threads()}")
    base = build_base_model(Path(resolve_base_model(LOCAL_BASE_MODEL)))
    rows = clean_chat_rows(args.task, args.n, 21, oversample=6, max_prompt_chars=400)
    bench_model(f"base model {base}", load_model(str(base)), rows, args)

    if args.finetune_epochs:
        from ftops.training.hf import fine_tune

        test_prompts = {r["messages"][0]["content"] for r in rows}
        pool = clean_chat_rows(args.task, 400 + args.n, 22, oversample=6, max_prompt_chars=400)
        train = [r for r in pool if r["messages"][0]["content"] not in test_prompts]
        with tempfile.TemporaryDirectory() as tmp:
            params = HuggingFaceBackend(epochs=args.finetune_epochs, learning_rate=5e-3, batch_size=16)
            result = fine_tune(str(base), train[:400], Path(tmp) / "adapter", params)
            print(f"\n(trained {result.steps} LoRA steps in {result.seconds:.0f} s, loss {result.first_loss:.2f} -> "
                  f"{result.final_loss:.2f})")  # fmt: skip
            bench_model("fine-tuned (base + LoRA, merged)", load_model(str(base), result.output_dir), rows, args)
    with open("/proc/loadavg") as f:
        print(f"\nload after: {f.read().strip()}")


if __name__ == "__main__":
    main()
