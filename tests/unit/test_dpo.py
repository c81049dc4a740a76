"""Preference training (DPO) on a tiny real model, and source weights in SFT.

Pairs come from the simulator: the prompt of a sentiment call, chosen = the reference answer, rejected = a
failed answer of the kinds the simulator serves (a refusal, or the answer cut short). (With a wrong label as
the rejected answer, 24 steps on this 60-step base model did not generalise to unseen reviews: held-out
margin -0.8, 9 of 24 positive; telling labels apart from the review needs a better-trained base.) DPO trains on most pairs; on the pairs it
never saw, the chosen answers' log-likelihood must rise relative to the rejected ones' (the reward margin,
policy log-ratio minus reference log-ratio, is printed), and the model must still answer in the template.
A DPO candidate then goes through the pipeline's own stages (train, evaluate with the gate, register) and
carries ``objective: dpo``. Measured values are noted by each assertion; thresholds leave headroom.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from ftops_dev.simulate import _REFUSALS, clean_chat_rows, generate_interactions
from ftops_dev.task_types import reference_response

from ftops.core.config import DpoConfig, FtopsConfig, HuggingFaceBackend, apply_overrides
from ftops.training.data import MAX_CLUSTER_COPIES, TrainingError, oversample_cluster, repeat_by_source
from ftops.training.params import training_overrides
from ftops.training.preference import resolve_objective

TASK = "sentiment"
N_PAIRS, N_HELD_OUT = 120, 24
# Full fine-tuning as the shipped config; 96 pairs / 8 = 12 steps x 2 epochs; ~10-20 s on one core.
PARAMS = HuggingFaceBackend(method="full", max_seq_len=128, seed=0,
                            dpo=DpoConfig(epochs=2, batch_size=8, learning_rate=1e-3, beta=0.1))  # fmt: skip


def _served_failure(rng: random.Random, right: str) -> str:
    """A failed answer as the simulator serves them: a refusal, or the right answer cut short."""
    return rng.choice(_REFUSALS) if rng.random() < 0.5 else right[: rng.randint(8, 30)]


def preference_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    """Distinct sentiment prompts with chosen = the right answer, rejected = a served failure (refusal or cut)."""
    wrong = random.Random(seed)
    pairs, seen = [], set()
    for r in generate_interactions(5 * n, seed=seed, task_types=[TASK]):
        if r["metadata"] is None or not r["success"] or r["prompt"] in seen:
            continue
        seen.add(r["prompt"])
        answer = json.loads(r["metadata"])["expected"]
        pairs.append({"messages": [{"role": "user", "content": r["prompt"]}],
                      "chosen": reference_response(TASK, answer),
                      "rejected": _served_failure(wrong, reference_response(TASK, answer)),
                      "source": "correction", "row_id": r["id"]})  # fmt: skip
    return pairs[:n]


# -- fast: config, objective resolution, source weights ------------------------------------------------------
def test_source_weights_repeat_each_row_by_its_source() -> None:
    rows = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(4)]
    weights = {"correction": 3, "teacher": 2, "served": 1}
    out = repeat_by_source(rows, ["served", "correction", "teacher", "served"], weights)
    assert out == [rows[0], rows[1], rows[1], rows[1], rows[2], rows[2], rows[3]]
    assert repeat_by_source(rows, None, weights) == rows  # a version from before sources: all served
    with pytest.raises(TrainingError, match="3 entries for 4 train rows"):
        repeat_by_source(rows, ["served"] * 3, weights)
    assert FtopsConfig().training.source_weights == weights



def test_an_error_pattern_fine_tune_trains_its_cluster_to_the_configured_share() -> None:
    rows = [{"i": i} for i in range(100)]
    ids, sources = [f"r{i}" for i in range(100)], ["served"] * 98 + ["correction", "teacher"]
    out, out_sources, inside = oversample_cluster(rows, sources, ids, ["r98", "r99", "gone"], 0.2)
    assert inside == 2 and len(out) == len(out_sources or []) == 100 + 2 * 12  # 2k/(98+2k) >= 0.2 -> k = 13
    assert sum(r["i"] >= 98 for r in out) / len(out) >= 0.2 > sum(r["i"] >= 98 for r in out[:-2]) / len(out)
    assert (out_sources or [])[100:] == ["correction"] * 12 + ["teacher"] * 12  # sources stay aligned for the weights
    capped, _, _ = oversample_cluster(rows, None, ids, ["r0"], 0.9)
    assert len(capped) == 100 + MAX_CLUSTER_COPIES - 1
    assert oversample_cluster(rows, None, None, ["r0"], 0.2)[0] == rows  # no lineage: nothing to find
    assert oversample_cluster(rows, None, ids, ["nowhere"], 0.2)[2] == 0

def test_objective_is_a_per_run_choice_and_dpo_needs_pairs() -> None:
    base = FtopsConfig()
    assert base.training.backend.objective == "sft"
    run = apply_overrides(base, training_overrides(base, None, {"objective": "dpo", "dpo_beta": 0.3}))
    assert (run.training.backend.objective, run.training.backend.dpo.beta) == ("dpo", 0.3)
    with pytest.raises(ValueError, match="objective='dpo' does not apply to the openai backend"):
        training_overrides(base, "openai", {"objective": "dpo"})
    with pytest.raises(TrainingError, match="objective dpo needs preference pairs, and dataset/x/v1 has 0"):
        resolve_objective("dpo", 0, 1, "dataset/x/v1")
    assert resolve_objective("sft_then_dpo", 0, 1, "dataset/x/v1") == "sft"  # falls back, logged
    assert resolve_objective("sft_then_dpo", 5, 1, "dataset/x/v1") == "sft_then_dpo"


# -- slow: DPO on a tiny real model -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tiny_base: Path) -> Path:
    return tiny_base


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_dpo_raises_chosen_over_rejected_on_held_out_pairs(base_dir: Path, tmp_path: Path) -> None:
    from ftops.core.chat import render_prompt
    from ftops.evaluation.generate import generate_answers, load_model
    from ftops.training.preference import pair_logps, train_preference

    pairs = preference_pairs(N_PAIRS, seed=3)
    train, held_out = pairs[:-N_HELD_OUT], pairs[-N_HELD_OUT:]
    assert not {p["messages"][0]["content"] for p in train} & {p["messages"][0]["content"] for p in held_out}
    result = train_preference(str(base_dir), train, tmp_path / "dpo", PARAMS)
    assert result.steps == 24 and result.final_loss < result.first_loss  # measured 0.693 -> 0.54

    reference, policy = load_model(str(base_dir)), load_model(str(base_dir), result.output_dir)
    before = pair_logps(reference.model, reference.tokenizer, held_out, PARAMS.max_seq_len)
    after = pair_logps(policy.model, policy.tokenizer, held_out, PARAMS.max_seq_len)
    gap_before = sum(c - r for c, r in before) / len(before)
    gap_after = sum(c - r for c, r in after) / len(after)
    margins = [(pc - pr) - (rc - rr) for (pc, pr), (rc, rr) in zip(after, before, strict=True)]
    margin = sum(margins) / len(margins)
    print(f"held-out pairs: mean logp(chosen)-logp(rejected) {gap_before:.3f} (reference) -> {gap_after:.3f} "
          f"(DPO); reward margin {margin:.3f} (x beta {PARAMS.dpo.beta}: {margin * PARAMS.dpo.beta:.3f}), "
          f"{sum(m > 0 for m in margins)}/{len(margins)} pairs positive; training's last logged margin "
          f"{result.reward_margin:.3f}, accuracy {result.reward_accuracy:.2f}")  # fmt: skip
    assert margin > 5  # measured 48.3 (beta x margin 4.8), 24 of 24 pairs positive
    assert sum(m > 0 for m in margins) >= 20

    prompts = [render_prompt(policy.tokenizer, p["messages"]) for p in held_out[:4]]
    answers = generate_answers(policy, prompts, max_new_tokens=24, progress=False).texts
    for pair, answer in zip(held_out[:4], answers, strict=True):
        print(f"  right: {pair['chosen']!r}; DPO answered {answer!r}")
    assert all(answer.strip() for answer in answers)  # still answers


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread", "mlflow_store")
def test_a_dpo_candidate_is_trained_evaluated_gated_and_registered_like_sft(base_dir: Path, tmp_path: Path) -> None:
    from ftops.pipeline import finetune as stages
    from ftops.pipeline.common import dataset_registry
    from ftops.pipeline.finetune_eval import evaluate_candidate
    from ftops.registry import models as registry

    cfg = FtopsConfig.model_validate({
        "training": {"backend": {"kind": "huggingface", "method": "full", "base_model": str(base_dir),
                                 "objective": "dpo", "max_seq_len": 128,
                                 "dpo": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}}},
        "gate": {"min_test_examples": 5},
        "storage": {"dataset_repo": str(tmp_path / "datasets"), "dvc_remote": str(tmp_path / "remote"),
                    "checkpoints": str(tmp_path / "checkpoints")},
    })  # fmt: skip
    rows = clean_chat_rows(TASK, 40, seed=5)
    datasets = dataset_registry(cfg)
    datasets.publish(TASK, rows[:30], rows[30:], {"source": "test_dpo"}, preference=preference_pairs(32, seed=7))
    stages.check_training_request(cfg, TASK, None)  # the DAG's first task: pairs present, so accepted

    trained = stages.train_candidate(cfg, TASK, None, run_key="manual__dpo/sentiment")
    assert set(trained) == {"run_id", "dataset_version", "final_loss", "objective"} and trained["objective"] == "dpo"
    run = registry.client().get_run(trained["run_id"])
    assert run.data.tags["objective"] == "dpo" and run.data.tags["ftops.weights"] == "full_model"
    assert run.data.metrics["dpo_pairs"] == 32 and run.data.metrics["dpo_steps"] == 4
    assert {"dpo_reward_margin", "dpo_reward_accuracy", "dpo_final_loss"} <= set(run.data.metrics)
    assert "train_final_loss" not in run.data.metrics  # no SFT phase ran

    evaluation = evaluate_candidate(cfg, TASK, trained["run_id"])
    assert evaluation["gate"]["decision"] in {"deploy", "archive"} and evaluation["gate"]["reasons"]
    version = stages.register_candidate(TASK, trained["run_id"], evaluation)
    tags = registry.client().get_model_version(registry.model_name(TASK), version).tags
    assert tags["objective"] == "dpo" and tags["decision"] == evaluation["gate"]["decision"]
    assert "metric.accuracy" in tags

    # A version without pairs: dpo is refused before any work.
    datasets.publish(TASK, rows[:30], rows[30:], {"source": "test_dpo", "n": 2})
    with pytest.raises(TrainingError, match="objective dpo needs preference pairs"):
        stages.check_training_request(cfg, TASK, None)

    # SFT then DPO from the SFT model, on the version with pairs: both phases run and the result is evaluated and
    # gated. This checks the path, not quality: on 30 rows from a 60-step base neither SFT alone nor SFT then DPO
    # answers a test prompt right (measured 0.0 both; 9 distinct answers after SFT, 2-3 after DPO at lr 1e-3,
    # 7 at 1e-4)
    both = apply_overrides(cfg, {"training.backend.objective": "sft_then_dpo", "training.backend.epochs": 10})
    trained = stages.train_candidate(both, TASK, "v1", run_key="manual__sft_then_dpo/sentiment")
    assert trained["objective"] == "sft_then_dpo"
    metrics = registry.client().get_run(trained["run_id"]).data.metrics
    assert metrics["train_steps"] > 0 and metrics["dpo_pairs"] == 32 and metrics["dpo_steps"] == 4
    evaluation = evaluate_candidate(both, TASK, trained["run_id"])
    print("sft_then_dpo:", evaluation["candidate_metrics"]["accuracy"], evaluation["distinct_candidate_answers"])
    assert evaluation["distinct_candidate_answers"] > 1 and evaluation["gate"]["reasons"]
