"""Upstream champions (issue 22, first part): an existing OpenAI-compatible model registered with its prices, served
by the gateway through the connection's base URL and key (the stand-in OpenAI server, through the real ``openai``
client), every call logged with its cost; an upstream that is down is answered with an OpenAI error and logged as a
failed call.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from ftops.cli import main as ftops_main
from ftops.core.config import ServingConfig
from ftops.deployment import rollout
from ftops.registry import models as registry
from ftops.registry.upstream import register_upstream
from ftops.serving.gateway import build_gateway
from ftops.warehouse.schema import log_tables
from tests.fake_openai import BASE_MODEL_REPLY, FakeOpenAI, count_tokens
from tests.serving_support import GatewayServer

pytestmark = pytest.mark.usefixtures("mlflow_store")
SECRET = "sk-upstream-secret-0123456789"
PRICE_IN, PRICE_OUT = 2.5, 10.0  # per million tokens, like a large hosted model


def test_bad_upstreams_are_refused_with_the_reason() -> None:
    for conn, model, p_in, p_out, says in [
        ("bad-id", "gpt-4o", 1.0, 1.0, "connection id"),
        ("ok", "", 1.0, 1.0, "model name"),
        ("ok", " gpt-4o", 1.0, 1.0, "model name"),
        ("ok", "gpt-4o", -1.0, 1.0, "input tokens"),
        ("ok", "gpt-4o", 1.0, float("nan"), "output tokens"),
    ]:
        with pytest.raises(ValueError, match=says):
            register_upstream("up_bad", conn, model, p_in, p_out)
    assert registry.versions("up_bad") == []


def test_registering_again_returns_the_same_version_and_a_new_price_a_new_one() -> None:
    first = register_upstream("up_again", "large", "gpt-4o", PRICE_IN, PRICE_OUT)
    assert register_upstream("up_again", "large", "gpt-4o", PRICE_IN, PRICE_OUT) == first
    cheaper = register_upstream("up_again", "large", "gpt-4o", 1.25, 5.0)
    assert cheaper != first
    tags = {str(v.version): v.tags for v in registry.versions("up_again")}
    assert tags[first]["backend"] == "upstream" and tags[first]["upstream.model"] == "gpt-4o"
    assert (tags[first]["price.input_per_mtok"], tags[cheaper]["price.input_per_mtok"]) == ("2.5", "1.25")


def test_the_cli_registers_and_deploys_and_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["register-upstream", "--task-type", "up_cli", "--connection", "large", "--model", "gpt-4o",
            "--price-input", "2.5", "--price-output", "10", "--deploy"]  # fmt: skip
    assert ftops_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deployed_as"] == "champion"
    assert str(registry.alias_version("up_cli", registry.CHAMPION).version) == out["version"]
    assert ftops_main([*args[:-5], "--price-input", "-1", "--price-output", "10"]) == 2
    assert "finite number ≥ 0" in capsys.readouterr().err


def _rows(engine: sa.Engine, task_type: str) -> list[dict[str, Any]]:
    _, t, _, _ = log_tables("interactions")
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t).where(t.c.task_type == task_type).order_by(t.c.timestamp))]


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with FakeOpenAI() as fake:
        monkeypatch.setenv("AIRFLOW_CONN_UPSTREAM_LARGE",
                           json.dumps({"conn_type": "openai", "host": fake.base_url, "password": SECRET}))  # fmt: skip
        version = register_upstream("up_served", "upstream_large", "gpt-4o", PRICE_IN, PRICE_OUT)
        assert rollout.deploy("up_served", version, 10) == "champion"
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
        gateway = build_gateway(ServingConfig(flush_every_s=0.2), engine, spool_dir=str(tmp_path / "spool"))
        with GatewayServer(gateway) as server:
            yield {"fake": fake, "gateway": gateway, "engine": engine, "version": version,
                   "client": openai.OpenAI(api_key="unused", base_url=server.base_url, max_retries=0)}  # fmt: skip


def test_the_gateway_forwards_to_the_upstream_with_the_connections_key_and_logs_each_calls_cost(upstream) -> None:
    system = {"role": "system", "content": "You are terse."}
    done = upstream["client"].chat.completions.create(
        model="ftops/up_served", messages=[system, {"role": "user", "content": "Where is Lisbon?"}], user="u1",
        temperature=0.3)
    assert done.choices[0].message.content == BASE_MODEL_REPLY  # the stand-in's answer for gpt-4o
    assert upstream["fake"].api_keys_seen == [SECRET]  # the connection's key went to the connection's URL only
    upstream["gateway"].logger.flush()
    [row] = _rows(upstream["engine"], "up_served")
    assert row["model_version"] == f"ftops-up_served/{upstream['version']}" and row["success"]
    # the whole request beside the prompt (the last user message): system prompt and sampling parameters
    assert row["prompt"] == "Where is Lisbon?"
    assert json.loads(row["request"]) == {"messages": [system, {"role": "user", "content": "Where is Lisbon?"}],
                                          "max_tokens": 64, "temperature": 0.3}  # fmt: skip
    # the stand-in counts tokens as the usage it answers; the cost is those tokens at the version's prices
    usage = done.usage
    assert row["tokens_used"] == usage.prompt_tokens + usage.completion_tokens
    meta = json.loads(row["metadata"])
    assert meta["cost"] == pytest.approx((usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1e6)
    tags = {**registry.versions("up_served")[0].tags, **registry.client().get_run(
        registry.versions("up_served")[0].run_id).data.tags}  # fmt: skip
    assert SECRET not in json.dumps(tags) and SECRET not in json.dumps(meta)


def test_an_upstream_that_is_down_gets_an_openai_error_and_a_failed_row(upstream) -> None:
    upstream["fake"].fail_next(4, status=503, route="POST /v1/chat/completions")  # the client's retry included
    with pytest.raises(openai.InternalServerError) as caught:
        upstream["client"].chat.completions.create(model="ftops/up_served",
                                                    messages=[{"role": "user", "content": "Where is Oslo?"}])  # fmt: skip
    assert caught.value.body["type"] == "server_error" and "failed to answer" in caught.value.body["message"]
    upstream["gateway"].logger.flush()
    [row] = _rows(upstream["engine"], "up_served")
    assert not row["success"] and row["response"] == ""
    assert json.loads(row["metadata"])["finish_reason"] == "error"


def test_an_upstream_champion_is_evaluated_through_its_connection_and_its_calls_priced(upstream, tmp_path: Path) -> None:
    from ftops.core.config import FtopsConfig
    from ftops.pipeline.finetune_eval import evaluate_versions, version_spec

    champion = registry.alias_version("up_served", registry.CHAMPION)
    rows = [{"messages": [{"role": "user", "content": f"Where is city {i}?"},
                          {"role": "assistant", "content": BASE_MODEL_REPLY if i % 2 else "elsewhere"}]}
            for i in range(6)]  # fmt: skip
    seen_connections: list[str] = []

    def connect(conn_id: str) -> openai.OpenAI:  # as the DAG's openai_client(conn_id) does from Airflow
        seen_connections.append(conn_id)
        return openai.OpenAI(api_key=SECRET, base_url=upstream["fake"].base_url, max_retries=0)

    [result] = evaluate_versions([version_spec(champion)], rows, FtopsConfig(), str(tmp_path), None, connect=connect)
    assert seen_connections == ["upstream_large"] and result.metrics["accuracy"] == pytest.approx(0.5)
    assert upstream["fake"].calls["POST /v1/chat/completions"] == 6
    # the stand-in's usage: 3 + (3 + tokens) per message in, the reply's tokens out; priced by the version's tags
    tokens_in = [3 + 3 + count_tokens(r["messages"][0]["content"]) for r in rows]
    cost = (sum(tokens_in) * PRICE_IN + 6 * count_tokens(BASE_MODEL_REPLY) * PRICE_OUT) / 1e6
    assert result.metrics["cost_per_1k_calls"] == pytest.approx(cost / 6 * 1000)
    assert math.isnan(result.metrics["perplexity"])


def test_cost_per_1k_calls_and_the_saving_against_the_first_upstream_are_in_status_json(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from ftops.core.config import apply_overrides, load_config
    from ftops.warehouse.schema import ensure_schema, insert_interactions
    from tests.serving_support import register_local_version
    from tests.status_support import free_port

    task = "up_cost"
    upstream = register_upstream(task, "upstream_large", "gpt-4o", PRICE_IN, PRICE_OUT)
    assert rollout.deploy(task, upstream, 10) == "champion"
    local = register_local_version(task, tiny_base, "up-cost-student")
    assert rollout.deploy(task, local, 50) == "canary"
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = sa.create_engine(url)
    ensure_schema(engine)
    now = datetime.now(UTC)
    # what the gateway logs: an upstream call's cost (tokens x prices); a local call's decode time, unpriced then
    rows = [{"id": f"u{i}", "task_type": task, "timestamp": now, "prompt": "p", "response": "r", "success": True,
             "model_version": f"ftops-{task}/{upstream}", "metadata": json.dumps({"cost": 0.002})} for i in range(10)]
    rows += [{"id": f"l{i}", "task_type": task, "timestamp": now, "prompt": "p", "response": "r", "success": True,
              "model_version": f"ftops-{task}/{local}", "metadata": json.dumps({"decode_ms": 100.0})} for i in range(10)]
    rows.append({"id": "failed", "task_type": task, "timestamp": now, "prompt": "p", "response": "", "success": False,
                 "model_version": f"ftops-{task}/{upstream}", "metadata": json.dumps({"cost": 9.0})})  # not answered
    insert_interactions(engine, rows)
    config = tmp_path / "ftops.yaml"  # local compute priced at 0.36 an hour: 100 ms of decoding costs 0.00001
    config.write_text(yaml.safe_dump(apply_overrides(load_config(), {"gate.compute_cost_per_hour": 0.36})
                                     .model_dump(mode="json")))  # fmt: skip
    monkeypatch.setenv("FTOPS_CONFIG", str(config))
    monkeypatch.setenv("FTOPS_AIRFLOW_URL", f"http://127.0.0.1:{free_port()}")  # Airflow down: reported, rest shown
    assert ftops_main(["status", "--json", "--warehouse-url", url]) == 1
    [model] = [m for m in json.loads(capsys.readouterr().out)["models"] if m["task_type"] == task]
    cost = model["cost"]
    assert cost["champion_per_1k_calls"] == pytest.approx(2.0) and cost["canary_per_1k_calls"] == pytest.approx(0.01)
    assert cost["first_upstream"] == {"version": upstream, "model": "gpt-4o", "per_1k_calls": pytest.approx(2.0)}
    assert cost["canary_saving"] == pytest.approx(0.995) and cost["champion_saving"] == pytest.approx(0.0)
    assert ftops_main(["status", "--warehouse-url", url]) == 1
    assert "cost per 1 000 calls: champion 2 (saving 0.0%), canary 0.01 (saving 99.5%), first upstream" in (
        capsys.readouterr().out)


def test_an_upstream_answers_each_call_on_its_own_so_no_call_waits_for_or_fails_with_another() -> None:
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ftops.serving.backends import Completion, CompletionRequest
    from ftops.serving.batcher import Batcher, QueueFullError

    class Remote:  # a remote model taking 0.3 s a call; "fail" gets an upstream error
        exclusive, name, calls = False, "remote", []

        def complete(self, requests: list[CompletionRequest]) -> list[Completion]:
            self.calls.append(len(requests))
            time.sleep(0.3)
            if requests[0].messages[-1][1] == "fail":
                raise RuntimeError("upstream answered 500")
            return [Completion(text=r.messages[-1][1], prompt_tokens=1, completion_tokens=1, finish_reason="stop")
                    for r in requests]  # fmt: skip

    async def run() -> list[Any]:
        batcher = Batcher(Remote(), ThreadPoolExecutor(max_workers=32), max_batch=16, max_queue=20)
        asks = [batcher.submit(CompletionRequest(((("user", "fail" if i == 3 else f"q{i}"),)), 8)) for i in range(20)]
        answers = await asyncio.gather(*asks, return_exceptions=True)
        with pytest.raises(QueueFullError):  # 20 in flight at once is the bound
            await asyncio.gather(*(batcher.submit(CompletionRequest((("user", "q"),), 8)) for _ in range(21)))
        return answers

    answers = asyncio.run(run())
    assert isinstance(answers[3], RuntimeError)  # only the call that failed upstream failed
    assert [a.text for i, a in enumerate(answers) if i != 3] == [f"q{i}" for i in range(20) if i != 3]
    assert len(Remote.calls) >= 20 and set(Remote.calls) == {1}  # each call on its own (in batches, 16 users waited for the slowest of 16)
