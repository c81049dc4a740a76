"""Upstream champions (issue 22, first part): an existing OpenAI-compatible model registered with its prices, served
by the gateway through the connection's base URL and key (the stand-in OpenAI server, through the real ``openai``
client), every call logged with its cost; an upstream that is down is answered with an OpenAI error and logged as a
failed call.
"""

from __future__ import annotations

import json
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
from tests.fake_openai import BASE_MODEL_REPLY, FakeOpenAI
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
        model="ftops/up_served", messages=[system, {"role": "user", "content": "Where is Lisbon?"}], user="u1")
    assert done.choices[0].message.content == BASE_MODEL_REPLY  # the stand-in's answer for gpt-4o
    assert upstream["fake"].api_keys_seen == [SECRET]  # the connection's key went to the connection's URL only
    upstream["gateway"].logger.flush()
    [row] = _rows(upstream["engine"], "up_served")
    assert row["model_version"] == f"ftops-up_served/{upstream['version']}" and row["success"]
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


def test_a_candidate_against_an_upstream_champion_is_refused_with_the_reason(tmp_path: Path) -> None:
    from ftops.core.config import FtopsConfig
    from ftops.pipeline.finetune_eval import evaluate_versions

    spec = ({"backend": "upstream", "upstream.model": "gpt-4o"}, "")
    with pytest.raises(ValueError, match="gpt-4o is an upstream model: a candidate cannot be evaluated"):
        evaluate_versions([spec], [], FtopsConfig(), str(tmp_path), None)
