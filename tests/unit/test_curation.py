"""Curation on small frames built here, with a deterministic fake embedder (the real one is tested elsewhere)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fakes import HashEmbedder, row
from ftops_dev.simulate import generate_interactions

from ftops.core.config import CurationConfig
from ftops.curation.curate import curate_frame, examples_of
from ftops.curation.rules import split_of
from ftops.curation.scrub import find_leaks

CFG = CurationConfig(min_examples=1, target_size=100, test_split=0.2)


def test_each_rule_has_its_reason_and_counts_add_up() -> None:
    rows = [
        row(0),
        row(1, user_feedback=2),
        row(2, user_feedback=None),
        row(3, success=False),
        row(4, response="too short"),
        row(5, response="Error: upstream timeout after 30000 ms while generating the answer for you"),
        row(6, latency_ms=20_000),
        row(7, prompt=None),
        row(8, user_feedback=9),
        row(9, prompt="   "),
        row(10, latency_ms=-5),
        row(11, prompt="bad\x00byte"),
        row(12, prompt="Classify review number 0: great value"),  # exact duplicate of row 0
        row(13, prompt="x" * 30_000),
    ]
    result = curate_frame(pd.DataFrame(rows), CFG, HashEmbedder())
    assert result.balanced() and sum(result.accounting.values()) == len(rows)
    assert result.accounting == {
        "accepted": 1, "filtered:low_rating": 1, "filtered:no_rating": 1, "filtered:failed_call": 1,
        "filtered:response_too_short": 1, "filtered:error_text": 1, "filtered:too_slow": 1,
        "quarantined:null_prompt": 1, "quarantined:rating_out_of_range": 1, "quarantined:empty_prompt": 1,
        "quarantined:negative_latency": 1, "quarantined:nul_byte_in_prompt": 1, "filtered:duplicate": 1,
        "quarantined:prompt_too_long": 1,
    }  # fmt: skip
    assert {q["reason"] for q in result.quarantined} == {k.split(":")[1] for k in result.accounting
                                                          if k.startswith("quarantined")}  # fmt: skip


def test_missing_column_is_a_clear_error() -> None:
    frame = pd.DataFrame([row(0)]).rename(columns={"user_feedback": "rating"})
    with pytest.raises(KeyError, match="user_feedback"):
        curate_frame(frame, CFG, HashEmbedder())


def test_pii_and_secrets_are_scrubbed_before_anything_is_kept() -> None:
    secret_rows = [row(0, prompt="Mail me at jane.doe@example.com about review 1"),
                   row(1, prompt="My key is sk-proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF" + " review 2")]  # fmt: skip
    result = curate_frame(pd.DataFrame(secret_rows), CFG, HashEmbedder())
    text = " ".join(p for p, _ in examples_of(result.train + result.test))
    assert "jane.doe@example.com" not in text and "sk-proj-" not in text
    assert find_leaks(text) == []
    assert result.scrubbed["EMAIL"] == 1 and result.scrubbed["OPENAI_KEY"] == 1


def test_near_duplicates_are_dropped_by_the_diversity_threshold() -> None:
    class Collapsing(HashEmbedder):
        def embed(self, texts):  # every prompt is the same direction: all near duplicates
            v = np.ones((len(texts), self.dim), np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    result = curate_frame(pd.DataFrame([row(i) for i in range(5)]), CFG, Collapsing())
    assert result.accounting["accepted"] == 1 and result.accounting["filtered:near_duplicate"] == 4


def test_target_size_caps_the_dataset_and_the_best_rated_are_kept() -> None:
    rows = [row(i, user_feedback=4 if i % 2 else 5) for i in range(10)]
    result = curate_frame(pd.DataFrame(rows), CFG.model_copy(update={"target_size": 5}), HashEmbedder())
    assert result.accounting["accepted"] == 5 and result.accounting["filtered:over_target"] == 5
    kept = {p for p, _ in examples_of(result.train + result.test)}
    assert kept == {row(i)["prompt"] for i in range(0, 10, 2)}  # the five-star rows


def test_split_is_stable_and_roughly_the_configured_share() -> None:
    prompts = [f"prompt {i}" for i in range(2000)]
    first = [split_of(p, 0.2) for p in prompts]
    assert first == [split_of(p, 0.2) for p in prompts]
    assert split_of("Hello  World.", 0.2) == split_of("hello world", 0.2)  # normalised
    assert 0.17 < first.count("test") / len(first) < 0.23


def test_simulated_logs_curate_with_every_row_accounted_for() -> None:
    logs = [r for r in generate_interactions(600, seed=5) if r["task_type"] == "sentiment"]
    result = curate_frame(pd.DataFrame(logs), CFG.model_copy(update={"target_size": 500}), HashEmbedder())
    assert result.balanced()
    assert result.accounting["accepted"] > 50
    assert result.accounting["filtered:low_rating"] > 0 and result.accounting["filtered:duplicate"] > 0
