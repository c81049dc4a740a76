"""Evaluation: the paired bootstrap, scoring, and batched greedy generation equal to one prompt at a time.

Generation runs on a tiny randomly initialised GPT-2 with a tokenizer trained here on simulator text (well
under a second to build): its answers are noise, which is what an equality test wants, since noise makes
rows stop at many different steps. The stop tokens are chosen from what the model actually emits.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from ftops.evaluation.evaluate import evaluate
from ftops.evaluation.generate import LoadedModel, generate_answers
from ftops.evaluation.metrics import METRIC_KEYS, paired_bootstrap, score_answers

MAX_NEW = 16


# -- paired bootstrap -----------------------------------------------------------------------------------
def test_identical_models_give_a_zero_gain_and_a_zero_width_interval() -> None:
    correct = np.random.default_rng(1).random(200) < 0.4
    assert paired_bootstrap(correct, correct) == (0.0, 0.0, 0.0)


def test_equally_good_models_right_on_different_examples_get_an_interval_around_zero() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(300) < 0.5, rng.random(300) < 0.5
    diff, low, high = paired_bootstrap(a, b)
    assert low < 0 < high
    assert low <= diff <= high


def test_a_clearly_better_candidate_has_a_lower_bound_above_zero() -> None:
    rng = np.random.default_rng(3)
    baseline = rng.random(100) < 0.3
    candidate = baseline | (rng.random(100) < 0.3)  # right wherever the baseline is, and on ~20 % more
    diff, low, high = paired_bootstrap(candidate, baseline)
    assert diff == pytest.approx(candidate.mean() - baseline.mean())
    assert 0 < low < diff < high


def test_a_small_gain_on_few_examples_is_not_distinguishable_from_luck() -> None:
    baseline = [True] * 10 + [False] * 30
    candidate = [True] * 12 + [False] * 28  # +0.05, the configured minimum gain, on 40 examples
    diff, low, _ = paired_bootstrap(candidate, baseline)
    assert diff == pytest.approx(0.05)
    assert low <= 0


def test_bootstrap_is_deterministic_with_its_seed() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(150) < 0.6, rng.random(150) < 0.4
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(list(a), list(b), seed=7)
    # bounds are means of 150 zeros and ones, so nearby seeds may agree; across several they must not all
    assert len({paired_bootstrap(a, b, seed=s) for s in range(6)}) > 1


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random(2000) < 0.55, rng.random(2000) < 0.45
    diff, low, high = paired_bootstrap(a, b, resamples=4000)
    d = a.astype(float) - b.astype(float)
    half = 1.959964 * d.std() / math.sqrt(d.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(diff, abs=0.2 * half)


def test_a_lower_confidence_level_gives_a_narrower_interval() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.5
    _, low95, high95 = paired_bootstrap(a, b, confidence=0.95)
    _, low80, high80 = paired_bootstrap(a, b, confidence=0.80)
    assert low95 < low80 < high80 < high95


@pytest.mark.parametrize(
    ("a", "b", "kwargs"),
    [([], [], {}), ([1, 0], [1], {}), ([1, 0], [1, 1], {"resamples": 0}), ([1, 0], [1, 1], {"confidence": 1.0})],
)
def test_bootstrap_rejects_bad_input(a: list[int], b: list[int], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, **kwargs)


# -- scoring --------------------------------------------------------------------------------------------
def test_scoring_is_exact_match_after_normalisation_per_example() -> None:
    metrics, correct = score_answers(
        ["The city is  PARIS.", "The city is Rome", "Sentiment: positive."],
        ["the city is paris", "The city is Oslo", '"Sentiment: positive"'],
    )
    assert correct == [True, False, True]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert 0 < metrics["rouge_l"] < 1 and 0 < metrics["bleu"] <= 100


# -- generation on a tiny random model ------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other work
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    from ftops_dev.simulate import generate_interactions

    return [
        {"messages": [{"role": "user", "content": r["prompt"][:200]}, {"role": "assistant", "content": r["response"]}]}
        for r in generate_interactions(60, seed=3)
    ]


@pytest.fixture(scope="module")
def tiny(rows: list[dict[str, Any]]) -> LoadedModel:
    """A random 2-layer GPT-2 whose stop tokens are ones it emits often, at different steps."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ftops.training.basemodel import build_tokenizer

    texts = [m["content"] for r in rows for m in r["messages"]]
    tokenizer = build_tokenizer(texts, vocab_size=600)
    tokenizer.padding_side = "right"  # generation must left-pad whatever the tokenizer says
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    free = LoadedModel(model, tokenizer, "tiny-random", ())
    seen: Counter[int] = Counter()
    for ids in _hf_one_by_one(free, _prompts(free, rows), MAX_NEW)[0]:
        seen.update(set(ids[1:MAX_NEW - 1]))
    stops = tuple(sorted(t for t, _ in seen.most_common(3)))
    return LoadedModel(model, tokenizer, "tiny-random", stops)


def _prompts(loaded: LoadedModel, rows: list[dict[str, Any]]) -> list[str]:
    return [str(loaded.tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True))
            for r in rows]  # fmt: skip


def _hf_one_by_one(loaded: LoadedModel, prompts: list[str], max_new: int) -> tuple[list[list[int]], list[str]]:
    """The reference: ``model.generate`` on one unpadded prompt at a time, cut after the first stop token."""
    tok, ids_out, texts = loaded.tokenizer, [], []
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = loaded.model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id,
                                        eos_token_id=list(loaded.stop_token_ids) or None)  # fmt: skip
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        cut = next((i + 1 for i, t in enumerate(new) if t in loaded.stop_token_ids), len(new))
        ids_out.append(new[:cut])
        texts.append(str(tok.decode(new[:cut], skip_special_tokens=True)).strip())
    return ids_out, texts


def test_batched_generation_equals_generate_one_prompt_at_a_time(tiny: LoadedModel, rows: list) -> None:
    prompts = _prompts(tiny, rows)
    ref_ids, ref_texts = _hf_one_by_one(tiny, prompts, MAX_NEW)
    lengths = [len(ids) for ids in ref_ids]
    assert len(set(lengths)) >= 4 and min(lengths) < MAX_NEW // 2 and max(lengths) == MAX_NEW  # rows end apart
    for batch_size in (1, 7, 64):
        gen = generate_answers(tiny, prompts, batch_size=batch_size, max_new_tokens=MAX_NEW)
        assert gen.texts == ref_texts, batch_size
        assert gen.token_counts == lengths, batch_size
        assert gen.tokens == sum(lengths) and gen.seconds > 0
        assert len(gen.latencies_ms) == len(prompts) and all(x > 0 for x in gen.latencies_ms)


def test_a_row_that_finishes_early_has_a_shorter_latency_than_its_batch(tiny: LoadedModel, rows: list) -> None:
    gen = generate_answers(tiny, _prompts(tiny, rows), batch_size=64, max_new_tokens=MAX_NEW)
    short = [ms for ms, n in zip(gen.latencies_ms, gen.token_counts, strict=True) if n <= 2]
    long = [ms for ms, n in zip(gen.latencies_ms, gen.token_counts, strict=True) if n == MAX_NEW]
    assert short and long and max(short) < min(long)


def test_evaluate_batched_and_one_by_one_give_the_same_outputs_and_metrics(tiny: LoadedModel, rows: list) -> None:
    batched = evaluate(tiny, rows, batch_size=16, max_new_tokens=MAX_NEW)
    single = evaluate(tiny, rows, batch_size=1, max_new_tokens=MAX_NEW)
    assert set(batched.metrics) == set(METRIC_KEYS)
    assert batched.outputs == single.outputs and batched.correct == single.correct
    assert len(batched.correct) == len(rows) == batched.metrics["n"]
    for key in ("accuracy", "perplexity", "bleu", "rouge_l", "n"):
        assert batched.metrics[key] == single.metrics[key], key
    assert math.isfinite(batched.metrics["perplexity"]) and batched.metrics["perplexity"] > 1
    assert batched.metrics["cost_per_1k_tokens"] == 0.0  # unpriced by default


def test_cost_per_1k_tokens_prices_the_generation_time(tiny: LoadedModel, rows: list) -> None:
    m = evaluate(tiny, rows[:20], batch_size=8, max_new_tokens=MAX_NEW, cost_per_hour=3.6).metrics
    # 3.6 per hour = 0.001 per second; cost of 1 000 tokens = 1 000 / tokens_per_s seconds of it
    assert m["cost_per_1k_tokens"] == pytest.approx(0.001 * 1000 / m["tokens_per_s"], rel=1e-9)
    # a call's share of the batched decode time at the same price: the ratio of the two is tokens per call
    assert 0 < m["cost_per_1k_calls"] / m["cost_per_1k_tokens"] <= MAX_NEW


def test_an_overlong_prompt_keeps_its_end_and_is_reported(
    tiny: LoadedModel, rows: list, caplog: pytest.LogCaptureFixture
) -> None:
    long_row = {"messages": [{"role": "user", "content": "word " * 600}, {"role": "assistant", "content": "x"}]}
    with caplog.at_level(logging.WARNING, logger="ftops.evaluation.generate"):
        result = evaluate(tiny, [long_row, *rows[:3]], max_new_tokens=MAX_NEW)
    assert result.metrics["n"] == 4
    assert "1 prompts are longer than" in caplog.text


def test_evaluate_rejects_an_empty_split(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="no test rows"):
        evaluate(tiny, [])


def test_interleaved_timing_spreads_a_load_ramp_over_both_models(
    tiny: LoadedModel, rows: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two identical models while the machine gets steadily busier: each request takes 1 ms longer than the
    one before. Timed one model after the other the second looks ~32 ms slower; interleaved, they match."""
    import ftops.evaluation.generate as evaluation
    from ftops.evaluation.generate import Generation, time_single_requests

    calls: list[str] = []
    real = evaluation.generate_answers

    def ramp(model: LoadedModel, prompts: list[str], **kw: Any) -> Generation:
        calls.append(model.name)
        out = real(model, prompts, **kw)
        return Generation(out.texts, out.token_counts, [float(len(calls))], out.seconds)

    monkeypatch.setattr(evaluation, "generate_answers", ramp)
    other = LoadedModel(tiny.model, tiny.tokenizer, "tiny-random-2", tiny.stop_token_ids)
    sequential = [time_single_requests([m], rows, sample=32, max_new_tokens=2)[0] for m in (tiny, other)]
    assert sequential[1]["latency_p50_ms"] - sequential[0]["latency_p50_ms"] == 32
    calls.clear()
    first, second = time_single_requests([tiny, other], rows, sample=32, max_new_tokens=2)
    assert calls[:4] == ["tiny-random", "tiny-random-2", "tiny-random-2", "tiny-random"]  # order rotates
    assert len(calls) == 64 and abs(first["latency_p50_ms"] - second["latency_p50_ms"]) <= 1
    assert first["latency_p95_ms"] > first["latency_p50_ms"]
