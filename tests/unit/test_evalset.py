"""Frozen eval sets: import (every line accounted for), versions in the dataset registry, the leakage guard
keeping eval-set prompts and their paraphrases out of training, and the champion measured once per version."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes import erasure_config, row
from serving_support import register_local_version

from ftops.cli import main
from ftops.core.config import load_config
from ftops.curation.curate import curate_frame, examples_of
from ftops.curation.embedding import EmbeddingCache
from ftops.datasets.evalsets import EvalSets, as_example
from ftops.pipeline import finetune_eval
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.curate import evalset_prompts, published_examples
from ftops.pipeline.evalsets import evaluate_on_evalset, import_evalset
from ftops.registry import models as registry

# all-MiniLM-L6-v2 cosines (tests/unit/test_leakage.py): FRANCE_TEST to FRANCE_TRAIN 0.97, to FRANCE_OTHER 0.96
FRANCE_TEST = "What is the capital city of France?"  # hashes to test
FRANCE_TRAIN = "Which city is the capital of France?"  # hashes to train
FRANCE_OTHER = "What's the capital of France?"  # hashes to train; a paraphrase of the one above
ROUTER = "How do I reset my router to factory settings?"  # train
REVIEW = "Classify the sentiment of this review: the blender broke after two days."  # test


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("FTOPS_HOME", str(tmp_path / "home"))
    return erasure_config(tmp_path)


@pytest.fixture
def engine(tmp_path):
    return sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")


def lines(*items: object) -> list[str]:
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


def test_every_line_of_an_import_is_accepted_a_duplicate_or_rejected_with_its_line_number(cfg, engine) -> None:
    summary = import_evalset(cfg, engine, "sentiment", lines(
        {"prompt": "Is 'great blender' positive?", "reference": "Sentiment: positive."},             # 1 accepted
        {"prompt": "is 'great blender' positive", "reference": "Sentiment: positive."},               # 2 duplicate
        "{not json",                                                                                   # 3 rejected
        "",                                                                                            # blank
        {"prompt": "Mail jane.doe@example.com about the kettle: broken?", "reference": "Negative."},  # 5 scrubbed
        {"prompt": "no reference here"},                                                               # 6 rejected
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Review: awful. Sentiment?"}], "reference": "Negative."},  # 7
        {"prompt": "x", "reference": "y", "source": "served"},                                         # 8 rejected
        {"prompt": "nul \u0000 inside", "reference": "y"},                                             # 9 rejected
        [1, 2],                                                                                        # 10 rejected
        {"prompt": "both", "messages": [{"role": "user", "content": "q"}], "reference": "r"},          # 11 rejected
    ))  # fmt: skip
    assert summary["lines"] == 10 and summary["accepted"] == 3 and summary["duplicates"] == [2]
    assert [r["line"] for r in summary["rejected"]] == [3, 6, 8, 9, 10, 11]
    assert summary["accepted"] + len(summary["duplicates"]) + len(summary["rejected"]) == summary["lines"]
    reasons = dict((r["line"], r["reason"]) for r in summary["rejected"])
    assert "JSON" in reasons[3] and "reference" in reasons[6] and "source" in reasons[8] and "NUL" in reasons[9]
    assert summary["evalset"] == "evalset/sentiment/v1" and summary["created"] and summary["scrubbed"] == {"EMAIL": 1}

    evalsets = EvalSets(dataset_registry(cfg))
    rows = evalsets.read(evalsets.get("sentiment", 1))
    assert [r["source"] for r in rows] == ["imported"] * 3
    assert "jane.doe" not in json.dumps(rows) and "[EMAIL]" in rows[1]["prompt"]
    assert rows[2]["prompt"] == "Review: awful. Sentiment?" and len(rows[2]["messages"]) == 3
    assert as_example(rows[2])["messages"][-1] == {"role": "assistant", "content": "Negative."}

    again = import_evalset(cfg, engine, "sentiment", lines({"prompt": "Is 'great blender' positive?", "reference": "x"}))
    assert again["evalset"] == "evalset/sentiment/v1" and not again["created"] and again["duplicates"] == [1]
    grown = import_evalset(cfg, engine, "sentiment", lines({"prompt": "Terrible kettle. Sentiment?", "reference": "Negative."}))
    assert grown["evalset"] == "evalset/sentiment/v2" and grown["rows"] == 4
    assert len(evalsets.read(evalsets.get("sentiment", 1))) == 3  # a version never changes
    assert [v.tag for v in evalsets.versions("sentiment")] == ["evalset/sentiment/v1", "evalset/sentiment/v2"]
    assert dataset_registry(cfg).versions("sentiment") == []  # eval sets are not dataset versions


def test_the_cli_imports_a_file_and_lists_versions(cfg, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FTOPS_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setattr("ftops.cli.yardstick.load_config", lambda: cfg)
    path = tmp_path / "labelled.jsonl"
    path.write_bytes(b'{"prompt": "Rome? city", "reference": "Rome"}\n\xff\xfe bad bytes\n')
    assert main(["evalset", "import", str(path), "--task-type", "city_extraction"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["evalset"] == "evalset/city_extraction/v1"
    assert "line 2: rejected: not UTF-8" in out.err
    assert main(["evalset", "list", "--task-type", "city_extraction"]) == 0
    assert "evalset/city_extraction/v1: 1 rows (imported 1)" in capsys.readouterr().out
    assert main(["evalset", "import", str(path)]) == 2  # no task type


@pytest.fixture(scope="module")
def embedder():
    from ftops.curation.embedding import SentenceEmbedder

    return SentenceEmbedder(load_config().curation.embedding_model)


def test_an_evalset_prompt_and_its_paraphrase_never_reach_a_training_split(cfg, engine, embedder, tmp_path) -> None:
    import_evalset(cfg, engine, "sentiment", lines({"prompt": FRANCE_TEST, "reference": "Paris."}))
    evalset = evalset_prompts(cfg, "sentiment")
    assert evalset == [FRANCE_TEST] and published_examples(cfg, "sentiment") == []  # no dataset version yet

    def curate(prompts: list[str], published: list[tuple[str, str]] = ()):
        frame = pd.DataFrame([row(i, prompt=p) for i, p in enumerate(prompts)])
        return curate_frame(frame, cfg.curation, embedder, EmbeddingCache(tmp_path / "cache.sqlite"),
                            published=published, evalset=evalset)  # fmt: skip

    # each hashes to train: the eval question reworded (cosine 0.97, 0.96 to it)
    for paraphrase in (FRANCE_TRAIN, FRANCE_OTHER):
        result = curate([paraphrase, ROUTER, REVIEW])
        assert [p for p, _ in examples_of(result.train)] == [ROUTER]
        assert result.accounting["filtered:evalset"] == 1 and result.evalset_excluded == 1
        assert [p for p, _ in examples_of(result.test)] == [REVIEW] and result.balanced()
    # the eval question itself, or in capitals (the split hashes normalised text): a test row, never a training one
    for same in (FRANCE_TEST, FRANCE_TEST.upper()):
        kept = curate([same, ROUTER])
        assert [p for p, _ in examples_of(kept.test)] == [same] and kept.evalset_excluded == 0
    # trained on before the eval set came (an earlier version's train split): never in a training split again
    again = curate([FRANCE_TRAIN, ROUTER], published=[(FRANCE_TRAIN, "train"), (ROUTER, "train")])
    assert [p for p, _ in examples_of(again.train)] == [ROUTER] and again.evalset_excluded == 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 with its tokenizer, saved as a fine-tune leaves its weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ftops.training.basemodel import build_tokenizer

    tokenizer = build_tokenizer(["Which city is the capital of France? Paris.", "Rome is a city."], vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_new_evalset_version_measures_the_champion_once_and_a_retry_does_not_evaluate_again(
    cfg, engine, mlflow_store, model_dir, monkeypatch
) -> None:
    task = "city_extraction"
    old = register_local_version(task, model_dir, "run-old")
    champion = register_local_version(task, model_dir, "run-champion")
    registry.client().set_registered_model_alias(registry.model_name(task), registry.CHAMPION, champion)
    evaluated: list[int] = []
    real = finetune_eval.evaluate_versions

    def spy(specs, rows, *args, **kwargs):
        evaluated.append(len(specs))
        return real(specs, rows, *args, **kwargs)

    monkeypatch.setattr(finetune_eval, "evaluate_versions", spy)
    assert evaluate_on_evalset(cfg, task)["evalset"] is None and evaluated == []  # no eval set: nothing to do

    import_evalset(cfg, engine, task, lines({"prompt": "Which city? Rome is nice.", "reference": "Rome"}))
    first = evaluate_on_evalset(cfg, task, limit=1)
    assert first["evalset"] == f"evalset/{task}/v1" and list(first["evaluated"]) == [champion]
    assert first["pending"] == [old] and evaluated == [1]
    tags = registry.client().get_model_version(registry.model_name(task), champion).tags
    assert float(tags["evalset_accuracy.v1"]) == first["evaluated"][champion]

    retry = evaluate_on_evalset(cfg, task, limit=1)  # the champion is recorded: the older version's turn
    assert list(retry["evaluated"]) == [old] and champion in retry["recorded"] and evaluated == [1, 1]
    assert evaluate_on_evalset(cfg, task)["evaluated"] == {} and evaluated == [1, 1]  # nothing evaluated twice

    import_evalset(cfg, engine, task, lines({"prompt": "Which city? Oslo in winter.", "reference": "Oslo"}))
    third = evaluate_on_evalset(cfg, task)
    assert third["evalset"] == f"evalset/{task}/v2" and set(third["evaluated"]) == {champion, old}
    assert evaluated == [1, 1, 2]


def test_a_task_type_that_cannot_be_measured_does_not_stop_the_others(cfg, monkeypatch) -> None:
    from ftops.pipeline import evalsets

    def measure(cfg_, task_type, **_):
        if task_type == "broken":
            raise RuntimeError("weights missing")
        return {"task_type": task_type, "evalset": None, "evaluated": {}}

    monkeypatch.setattr(evalsets, "evaluate_on_evalset", measure)
    out = evalsets.measure_task_types(cfg, ["broken", "sentiment"])
    assert out[0] == {"task_type": "broken", "error": "RuntimeError: weights missing"}
    assert out[1]["task_type"] == "sentiment"
