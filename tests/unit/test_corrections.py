"""Corrections and the provenance of training targets, on a real warehouse (SQLite, and PostgreSQL where it runs)
and a real git + DVC dataset registry: ``/v1/feedback`` stores a correction capped and scrubbed, with the key
that sent it and when; an imported or fed-back correction becomes a ``correction``-sourced example, scrubbed;
a failed or low-rated answer with a better one becomes a preference pair of the published version (train prompts
only); the version's metadata counts examples per source; the governor's new data leaves out the champion's own
answers."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes import GOOD, HashEmbedder, erasure_config, fresh_warehouse, row

from ftops.core.config import CurationConfig
from ftops.curation.curate import curate_frame
from ftops.curation.rules import split_of
from ftops.datasets.versions import SPLITS
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.curate import curate_task_type
from ftops.pipeline.governor import count_new_examples
from ftops.serving.feedback import record_feedback
from ftops.serving.interaction_log import InteractionLogger
from ftops.serving.log_import import import_jsonl
from ftops.serving.openai_wire import ApiError
from ftops.warehouse.logread import read_log_window
from ftops.warehouse.schema import insert_interactions, log_tables

TASK = "sentiment"
NOW = datetime(2026, 11, 2, tzinfo=UTC)
EMAIL = "jane.doe@example.com"
RIGHT = "Sentiment: negative. The reviewer regrets the purchase and asks for a refund of the order."
WRONG = "Sentiment: positive. The reviewer is delighted with everything about the product they bought."
CHAMPION = f"ftops-{TASK}/1"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A fresh warehouse: an SQLite file, or a schema of its own on the local PostgreSQL server."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield from fresh_warehouse(request.param, tmp_path, url)


def _stored(engine: sa.Engine, call_id: str) -> dict:
    _, t, _, _ = log_tables("interactions")
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c.id == call_id)).one()._mapping)


def _split_ids(n: int, split: str, start: int = 0) -> list[int]:
    """Row numbers whose ``row()`` prompt lands in ``split`` (the split is a hash of the prompt)."""
    return [i for i in range(start, start + 400) if split_of(row(i)["prompt"], 0.2) == split][:n]


def test_feedback_stores_a_capped_correction_with_its_key_and_time_and_never_another_keys(
    wh: sa.Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_interactions(wh, [row(1, key_id="key-a", user_feedback=None, response=WRONG),
                             row(2, key_id="key-b", user_feedback=None)])  # fmt: skip
    logger = InteractionLogger(wh, "interactions", tmp_path / "spool")
    caplog.set_level(logging.DEBUG)
    correction = f"{RIGHT} Mail {EMAIL} for the refund."
    before = datetime.now(UTC)
    answer = record_feedback(wh, "interactions", logger, {"id": "r1", "rating": 1, "correction": correction}, "key-a",
                             max_correction_chars=200)  # fmt: skip
    assert answer["corrected"] and answer["rating"] == 1
    stored = _stored(wh, "r1")
    # stored scrubbed (the address replaced as curation replaces it in prompts); what the gateway recorded stays
    assert stored["correction"] == f"{RIGHT} Mail [EMAIL] for the refund." and EMAIL not in stored["correction"]
    assert stored["response"] == WRONG and stored["success"] is True
    assert stored["correction_key_id"] == "key-a" and stored["user_feedback"] == 1
    corrected_at = stored["corrected_at"].replace(tzinfo=stored["corrected_at"].tzinfo or UTC)
    assert before - timedelta(seconds=5) <= corrected_at <= datetime.now(UTC) + timedelta(seconds=5)

    for body, why in [({"id": "r1", "correction": "x" * 201}, "at most 200"),
                      ({"id": "r1", "correction": "nul \x00 byte"}, "NUL"),
                      ({"id": "r1", "correction": "lone \ud800 surrogate"}, "surrogate"),
                      ({"id": "r1", "correction": 5}, "non-empty text"),
                      ({"id": "r1", "correction": "   "}, "non-empty text"),
                      ({"id": "r1", "correction": "key -----BEGIN RSA PRIVATE KEY-----\nMIIEabc"}, "cannot be removed")]:  # fmt: skip
        with pytest.raises(ApiError) as bad:
            record_feedback(wh, "interactions", logger, body, "key-a", max_correction_chars=200)
        assert bad.value.status == 422 and why in bad.value.message and bad.value.param == "correction"
    # another key's call cannot be corrected, and learns nothing of it (the same 404 as an unknown id)
    with pytest.raises(ApiError) as other:
        record_feedback(wh, "interactions", logger, {"id": "r2", "correction": RIGHT}, "key-a")
    assert other.value.status == 404
    with pytest.raises(ApiError) as unknown:
        record_feedback(wh, "interactions", logger, {"id": "nope", "correction": RIGHT}, "key-a")
    assert unknown.value.status == 404 and unknown.value.message == other.value.message
    assert _stored(wh, "r2")["correction"] is None and EMAIL not in _stored(wh, "r1")["correction"]
    assert not [r for r in caplog.records if EMAIL in r.getMessage() or RIGHT in r.getMessage()]

    # where it is used, it is scrubbed: curation makes the correction the target, without the address
    frame, _ = read_log_window(wh, TASK, since=None, until=NOW + timedelta(days=30))
    curated = curate_frame(frame, CurationConfig(min_examples=1, test_split=0.001), HashEmbedder())
    assert curated.lineage == {"train": ["r1"], "test": []}  # r2: no rating and no correction (filtered)
    at = 0
    target = curated.train[at]["messages"][-1]["content"]
    assert curated.sources["train"][at] == "correction" and RIGHT in target and EMAIL not in target
    assert curated.served_by["train"][at] is None  # no served model wrote this reference
    assert curated.preference[0]["chosen"] == target and curated.preference[0]["rejected"] == WRONG
    assert curated.balanced()


def test_targets_follow_trust_and_fall_back_with_every_row_accounted_once() -> None:
    cfg = CurationConfig(min_examples=1, test_split=0.001)
    rows = [
        row(0),  # a good served answer
        row(1, user_feedback=1, correction=RIGHT, teacher_answer=WRONG + " (teacher)"),  # correction beats teacher
        row(2, success=False, teacher_answer=RIGHT + " (teacher)"),  # a failed call relabelled by the teacher
        row(3, user_feedback=2, correction="too short"),  # a correction that fails the length rule, bad served
        row(4, correction="Error: too short"),  # a rejected correction on a good row: the served answer stays
        row(5, user_feedback=2),  # low-rated, nothing better: filtered as today
        row(6, correction=GOOD),  # a "correction" equal to the served answer: the champion's own answer
        row(7, user_feedback=None, correction=RIGHT),  # no rating, but the user typed the right answer
        row(8, correction="nul \x00"),  # a malformed correction quarantines the row like a malformed response
    ]
    curated = curate_frame(pd.DataFrame(rows), cfg, HashEmbedder())
    by_id = dict(zip(curated.lineage["train"], curated.sources["train"], strict=True))
    assert by_id == {"r0": "served", "r1": "correction", "r2": "teacher", "r4": "served", "r6": "served",
                     "r7": "correction"}  # fmt: skip
    assert curated.accounting["filtered:correction_too_short"] == 1 and curated.accounting["filtered:low_rating"] == 1
    assert curated.accounting["quarantined:nul_byte_in_correction"] == 1 and curated.balanced()
    assert curated.accepted_sources == Counter({"source:served": 3, "source:correction": 2, "source:teacher": 1})
    assert curated.target_rejections == Counter({"correction_too_short": 2})
    # pairs only where a better answer replaced a different served one
    assert sorted((p["row_id"], p["source"]) for p in curated.preference) == [
        ("r1", "correction"), ("r2", "teacher"), ("r7", "correction")]  # fmt: skip
    # the pool keeps the source and the rejected answer: a later run makes the same examples and pairs
    later = curate_frame(pd.DataFrame([row(9)]), cfg, HashEmbedder(), earlier=curated.candidates)
    assert dict(zip(later.lineage["train"], later.sources["train"], strict=True)) == by_id | {"r9": "served"}
    assert sorted(p["row_id"] for p in later.preference) == ["r1", "r2", "r7"]
    assert later.accepted_sources == Counter({"source:served": 1}) and later.balanced()
    # switched off (curation.target_sources: []), the same rows train on served answers only: the control run
    served_only = curate_frame(pd.DataFrame(rows), cfg.model_copy(update={"target_sources": []}), HashEmbedder())
    assert set(served_only.lineage["train"]) == {"r0", "r4", "r6"} and not served_only.preference
    assert set(served_only.sources["train"]) == {"served"} and served_only.balanced()
    switched_off = curate_frame(pd.DataFrame([row(9)]), cfg.model_copy(update={"target_sources": []}), HashEmbedder(),
                                earlier=curated.candidates)  # fmt: skip
    assert set(switched_off.sources["train"]) == {"served"} and not switched_off.preference  # the pool's too


def test_an_imported_correction_becomes_a_sourced_example_and_a_preference_pair_of_the_version(
    wh: sa.Engine, tmp_path: Path
) -> None:
    cfg = erasure_config(tmp_path)
    train, test = _split_ids(3, "train", 100), _split_ids(2, "test", 100)
    good = [row(i, model_version=CHAMPION if i % 2 else "ftops-sentiment/0") for i in range(30)]
    corrected = [row(i, user_feedback=1, response=WRONG, correction=f"{RIGHT} Case {i}, mail {EMAIL}",
                     model_version=CHAMPION) for i in train + test]  # fmt: skip
    lines = [{**r, "timestamp": (NOW - timedelta(hours=1)).isoformat()} for r in good + corrected]
    path = tmp_path / "logs.jsonl"  # what a team's review tool hands `ftops import-logs`
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    imported = import_jsonl(path, wh)
    assert imported.inserted == len(lines) and not imported.rejected
    assert _stored(wh, f"r{train[0]}")["correction"].startswith(RIGHT)

    result = curate_task_type(wh, cfg, TASK, run_key="night-1", now=NOW, embedder=HashEmbedder())
    assert result["status"] == "versioned"
    assert result["accepted_sources"] == {"source:correction": 5, "source:served": 30}
    assert result["preference_pairs"] == 3 and result["accounting"]["accepted"] == 35
    datasets = dataset_registry(cfg)
    version = datasets.latest(TASK)
    meta = datasets.read_metadata(version)
    assert meta["source_counts"] == {"train": Counter(meta["sources"]["train"]),
                                     "test": Counter(meta["sources"]["test"])}  # fmt: skip
    assert sum(meta["source_counts"]["train"].values()) + sum(meta["source_counts"]["test"].values()) == 35
    assert meta["source_counts"]["train"]["correction"] == 3 and meta["source_counts"]["test"]["correction"] == 2
    for split in SPLITS:
        examples = datasets.read(version, split)
        assert len(meta["sources"][split]) == len(meta["served_by"][split]) == len(examples)
        for rid, source, by, ex in zip(meta["lineage"][split], meta["sources"][split], meta["served_by"][split],
                                       examples, strict=True):  # fmt: skip
            answer = ex["messages"][-1]["content"]
            if int(rid[1:]) in train + test:
                assert source == "correction" and by is None and answer.startswith(RIGHT) and EMAIL not in answer
            else:
                assert source == "served" and by is not None and answer == GOOD
    pairs = datasets.read_preference(version)
    assert sorted(p["row_id"] for p in pairs) == sorted(f"r{i}" for i in train)  # never a test prompt
    test_prompts = {m["content"] for ex in datasets.read(version, "test") for m in ex["messages"]}
    for p in pairs:
        assert p["source"] == "correction" and p["rejected"] == WRONG and p["chosen"].startswith(RIGHT)
        assert EMAIL not in p["chosen"] and p["messages"][-1]["role"] == "user"
        assert p["messages"][-1]["content"] not in test_prompts

    # the governor's new data: the champion's own served answers teach it nothing new; corrections do
    assert count_new_examples(datasets, version, None) == 35
    assert count_new_examples(datasets, version, None, champion=CHAMPION) == 35 - 15
