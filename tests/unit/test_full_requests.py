"""Full requests in the log (issue 22): the whole request (system prompt, earlier turns, sampling parameters) is
kept beside ``prompt`` (the last user message), through ``ftops import-logs`` and the gateway, on SQLite and
PostgreSQL; curation keeps the conversation (scrubbed, deduplicated with it) and the published examples replay
it; training masks everything but the final assistant turn; trusted teachers' unrated answers are targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes import GOOD, HashEmbedder, erasure_config, fresh_warehouse, row

from ftops.core.chat import ChatFormatError, context_and_prompt, logged_messages
from ftops.core.config import CurationConfig
from ftops.curation.curate import curate_frame
from ftops.datasets.versions import SPLITS
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.curate import curate_task_type
from ftops.serving.log_import import import_jsonl
from ftops.warehouse.schema import insert_interactions, log_tables

TASK = "sentiment"
NOW = datetime(2026, 11, 2, tzinfo=UTC)
EMAIL = "jane.doe@example.com"
SYSTEM = f"You are the support bot of Acme. Escalations go to {EMAIL}. Answer in one sentence."


def _request(prompt: str, system: str = SYSTEM, earlier: bool = True) -> dict:
    turns = [{"role": "system", "content": system}]
    if earlier:
        turns += [{"role": "user", "content": "Hello, I have a question about my order."},
                  {"role": "assistant", "content": "Of course: what is the question about your order?"}]  # fmt: skip
    return {"messages": [*turns, {"role": "user", "content": prompt}], "temperature": 0.2, "max_tokens": 64}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield from fresh_warehouse(request.param, tmp_path, url)


def test_logged_requests_are_parsed_or_refused_with_the_reason() -> None:
    messages = logged_messages(json.dumps(_request("Is it broken?")))
    context, prompt = context_and_prompt(messages)
    assert prompt == "Is it broken?" and [m["role"] for m in context] == ["system", "user", "assistant"]
    for bad, says in [("{", "not JSON"), ({"messages": []}, "non-empty"), ({"messages": [{"role": "tool",
                      "content": "x"}]}, "messages\\[0\\]"), ({"messages": [{"role": "system", "content": "x"}]},
                      "no user message")]:  # fmt: skip
        with pytest.raises(ChatFormatError, match=says):
            logged_messages(bad)


def test_imported_requests_replay_into_examples_with_the_system_prompt_and_earlier_turns(
    wh: sa.Engine, tmp_path: Path
) -> None:
    cfg = erasure_config(tmp_path)
    stamp = (NOW - timedelta(hours=1)).isoformat()
    plain = [{**row(i), "timestamp": stamp} for i in range(20)]
    multi = []
    for i in range(20, 30):  # prompt left out: taken from the request's last user message
        line = {k: v for k, v in row(i).items() if k != "prompt"}
        multi.append({**line, "timestamp": stamp, "request": _request(f"Classify review number {i}: great value")})
    # the same last message under another system prompt is another conversation, not a duplicate: it meets
    # the diversity selection (on the last message: a shared system prompt must not make calls look alike)
    multi.append({**row(40, prompt=row(20)["prompt"]), "timestamp": stamp,
                  "request": _request(row(20)["prompt"], system="You are terse.", earlier=False)})  # fmt: skip
    mismatch = {**row(50), "timestamp": stamp, "request": _request("something else entirely")}
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*plain, *multi, mismatch]))
    imported = import_jsonl(path, wh)
    assert imported.inserted == 31 and [n for n, _ in imported.rejected] == [32]
    assert "prompt must be the request's last user message" in imported.rejected[0][1]
    # a malformed request written by another tool straight into the warehouse: quarantined with the reason
    insert_interactions(wh, [{**row(60), "timestamp": NOW - timedelta(hours=1), "request": "{not json"}])
    _, t, _, _ = log_tables("interactions")
    with wh.connect() as conn:
        stored = json.loads(conn.execute(sa.select(t.c.request).where(t.c.id == "r20")).scalar_one())
    assert stored["temperature"] == 0.2 and len(stored["messages"]) == 4

    result = curate_task_type(wh, cfg, TASK, run_key="night-1", now=NOW, embedder=HashEmbedder())
    assert result["status"] == "versioned", result
    assert result["accounting"] == {"accepted": 30, "filtered:near_duplicate": 1, "quarantined:malformed_request": 1}
    datasets = dataset_registry(cfg)
    version = datasets.latest(TASK)
    meta = datasets.read_metadata(version)
    by_id = {}
    for split in SPLITS:
        by_id |= dict(zip(meta["lineage"][split], datasets.read(version, split), strict=True))
    assert len(by_id) == 30
    assert by_id["r3"]["messages"] == [{"role": "user", "content": row(3)["prompt"]},
                                       {"role": "assistant", "content": GOOD}]  # fmt: skip
    roles = [m["role"] for m in by_id["r25"]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    system = by_id["r25"]["messages"][0]["content"]
    assert EMAIL not in system and system.startswith("You are the support bot of Acme")  # scrubbed, kept
    assert by_id["r25"]["messages"][-1] == {"role": "assistant", "content": GOOD}
    kept = by_id.get("r40") or by_id["r20"]
    assert kept["messages"][0]["role"] == "system" and kept["messages"][-2]["content"] == row(20)["prompt"]
    assert EMAIL not in json.dumps([by_id[k] for k in by_id])


def test_training_masks_everything_but_the_final_assistant_turn(tiny_base) -> None:
    from transformers import AutoTokenizer

    from ftops.core.chat import IGNORE_INDEX, encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    messages = [*_request("Is it broken?")["messages"], {"role": "assistant", "content": "No: it needs charging."}]
    encoded = encode_conversation(tokenizer, messages)
    learned = [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    text = tokenizer.decode(learned)
    assert text.startswith("No: it needs charging.") and "question about my order" not in text
    assert encoded.prompt_len == len(encoded.input_ids) - len(learned)  # every earlier turn is prompt
    # a conversation longer than the training length loses its oldest prompt tokens, never the reply to learn
    cut = encode_conversation(tokenizer, messages, max_len=len(learned) + 5)
    assert len(cut.input_ids) == len(learned) + 5 and cut.prompt_len == 5
    assert cut.input_ids[5:] == learned and cut.input_ids[:5] == encoded.input_ids[encoded.prompt_len - 5 : encoded.prompt_len]
    tiny = encode_conversation(tokenizer, messages, max_len=3)  # shorter than the reply: one prompt token, its start
    assert tiny.prompt_len == 1 and tiny.input_ids[1:] == learned[:2]


def test_simulated_users_send_a_share_of_their_calls_as_conversations() -> None:
    from ftops_dev.traffic import SYSTEM_PROMPTS, conversation

    calls = [conversation("sentiment", f"prompt {i}", f"seed/{i}", 0.3) for i in range(400)]
    long = [c for c in calls if len(c) > 1]
    assert 0.22 * 400 < len(long) < 0.38 * 400 and all(len(c) == 1 for c in calls if c not in long)
    for i, c in enumerate(calls):
        assert c[-1] == {"role": "user", "content": f"prompt {i}"}
    assert {c[0]["content"] for c in long} <= set(SYSTEM_PROMPTS)
    assert [m["role"] for m in long[0]] == ["system", "user", "assistant", "user"]
    assert calls == [conversation("sentiment", f"prompt {i}", f"seed/{i}", 0.3) for i in range(400)]  # reproducible
    assert conversation("sentiment", "p", "k", 0.0) == [{"role": "user", "content": "p"}]


def test_a_trusted_teachers_unrated_answers_are_targets_and_its_low_rated_ones_are_not() -> None:
    cfg = CurationConfig(min_examples=1, test_split=0.001)
    teacher, other = "ftops-sentiment/1", "ftops-sentiment/2"
    rows = [row(0, user_feedback=None, model_version=teacher), row(1, user_feedback=None, model_version=other),
            row(2, user_feedback=2, model_version=teacher), row(3, user_feedback=None, model_version=teacher,
            response="Error: the upstream timed out before it could classify this review, please try again.")]  # fmt: skip
    plain = curate_frame(pd.DataFrame(rows), cfg, HashEmbedder())
    assert plain.accounting["filtered:no_rating"] == 3 and not plain.train
    trusted = curate_frame(pd.DataFrame(rows), cfg, HashEmbedder(), trusted=frozenset({teacher}))
    assert trusted.lineage["train"] == ["r0"] and trusted.sources["train"] == ["served"]
    assert trusted.accounting == {"accepted": 1, "filtered:no_rating": 1, "filtered:low_rating": 1,
                                  "filtered:error_text": 1}  # fmt: skip
