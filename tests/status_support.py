"""Test support for ``ftops status`` and ``ftops mcp``: an FT-Ops installation with history, built for real.

``build_state`` publishes a dataset version (DVC), records the governor decision that trained on it, registers
four versions of ``ftops-sentiment`` in a real MLflow store (``previous`` v1, ``champion`` v2 trained by that
decision, ``canary`` v3 at its first ramp step, archived v4) and logs served calls for the champion and the
canary in the warehouse, some of them with personal data in the prompt (which no answer may show).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

TASK = "sentiment"
DECISION_KEY = "scheduled__2026-11-30T06:00:00+00:00/sentiment"
PII = "jane.doe@example.com"


@dataclass
class State:
    env: dict[str, str]  # what a subprocess needs to see the same installation
    engine: Any
    cfg: Any
    dataset_tag: str
    now: datetime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"review {i}"},
                          {"role": "assistant", "content": "positive" if i % 2 else "negative"}]}
            for i in range(offset, offset + n)]  # fmt: skip


def _register(tags: dict[str, Any]) -> str:
    import mlflow

    from ftops.registry import models as registry

    with mlflow.start_run(experiment_id=registry.experiment_id(TASK)) as run:
        mlflow.log_metrics({"train_seconds": 42.0, "train_final_loss": 0.25})
    return registry.register(TASK, run.info.run_id, f"{run.info.artifact_uri}/model", tags)


def state_env(root: Path) -> dict[str, str]:
    """Where the installation of :func:`build_state` under ``root`` lives (a server can start on it first)."""
    return {
        "FTOPS_HOME": str(root / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "FTOPS_ARTIFACT_ROOT": (root / "artifacts").as_uri(),
        "FTOPS_WAREHOUSE_URL": f"sqlite:///{root / 'warehouse.db'}",
    }


def build_state(mp: pytest.MonkeyPatch, root: Path, **extra_env: str) -> State:
    """The installation under ``root``; ``mp`` points this process at it (undone with ``mp``)."""
    import sqlalchemy as sa

    from ftops.core.config import load_config
    from ftops.pipeline.common import dataset_registry
    from ftops.registry import models as registry
    from ftops.warehouse.schema import ensure_schema, insert_interactions
    from ftops.warehouse.state import record_decision, record_training_outcome

    env = {**state_env(root), **extra_env}
    for key, value in env.items():
        mp.setenv(key, value)
    now = datetime.now(UTC)
    cfg = load_config()
    engine = sa.create_engine(env["FTOPS_WAREHOUSE_URL"])
    ensure_schema(engine, cfg.interactions_table)
    dataset = dataset_registry(cfg).publish(TASK, _rows(12), _rows(3, 100), {"window": {"until": now.isoformat()}})
    record_decision(engine, {
        "decision_key": DECISION_KEY, "decided_at": now - timedelta(days=2), "task_type": TASK, "train": True,
        "reason": f"{dataset.tag} brings 15 new examples the champion's dataset lacks (≥ 10)",
        "dataset_version": dataset.tag, "kind": "training", "policy": "new_data",
        "run_id": "governor__sentiment__v1__new_data",
        "details": {"policies": {"error_pattern": {"patterns": [{"size": 11, "examples": [f"mail {PII} fails"]}]}}},
    })  # fmt: skip
    # the fine-tune that decision started ended (so no guard sees it in flight)
    record_training_outcome(engine, "governor__sentiment__v1__new_data", TASK, dataset_version=dataset.tag,
                            status="succeeded", model_version="2")  # fmt: skip
    lineage = {"dataset_version": dataset.tag, "content_hash": dataset.content_hash, "backend": "huggingface",
               "base_model": "local:tiny-gpt2", "baseline": "base model local:tiny-gpt2"}  # fmt: skip
    v1 = _register({**lineage, "decision": "deploy", "deployment": "previous", "traffic_percent": 0,
                    "metric.accuracy": 0.6, "baseline.accuracy": 0.5, "reason": "ok accuracy 0.600"})  # fmt: skip
    v2 = _register({**lineage, "decision": "deploy", "deployment": "champion", "traffic_percent": 100,
                    "promoted_at": (now - timedelta(days=1)).isoformat(), "metric.accuracy": 0.8,
                    "baseline.accuracy": 0.6, "metric.perplexity": 3.5, "baseline.perplexity": 4.0,
                    "reason": "ok accuracy 0.800 ≥ 0.600 + 0.05; ok perplexity 3.500 ≤ 4.000",
                    "trigger_reason": f"{dataset.tag} brings 15 new examples", "ftops.policy": "new_data",
                    "ftops.decision_key": DECISION_KEY})  # fmt: skip
    v3 = _register({**lineage, "decision": "deploy", "deployment": "canary", "traffic_percent": 10, "ramp_step": 0,
                    "deployed_at": (now - timedelta(hours=2)).isoformat(), "metric.accuracy": 0.85,
                    "baseline.accuracy": 0.8})  # fmt: skip
    v4 = _register({**lineage, "decision": "archive", "deployment": "archived", "archive_reason": "FAIL accuracy"})
    c = registry.client()
    for alias, version in ((registry.PREVIOUS, v1), (registry.CHAMPION, v2), (registry.CANARY, v3)):
        c.set_registered_model_alias(registry.model_name(TASK), alias, version)
    assert v4 == "4"
    calls = [{"id": f"call-{v}-{i}", "timestamp": now - timedelta(minutes=30 + i), "task_type": TASK,
              "prompt": f"my mail is {PII}, review {i}", "response": "positive", "model_version": f"ftops-{TASK}/{v}",
              "user_id": f"user-{i % 3}", "user_feedback": 5 if i % 4 else 2, "success": i % 10 != 0,
              "latency_ms": 100 + i, "tokens_used": 20} for v in (v2, v3) for i in range(20)]  # fmt: skip
    insert_interactions(engine, calls, cfg.interactions_table)
    return State({**os.environ, **env}, engine, cfg, dataset.tag, now)


async def mcp_calls(state: State, calls: list[tuple[str, dict[str, Any]]]) -> tuple[Any, list[Any]]:
    """Spawn ``ftops mcp`` on ``state``'s installation, list its tools and make ``calls`` through the SDK's client."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=sys.executable, args=["-m", "ftops.cli", "mcp"], env=state.env)
    with open(state.env["FTOPS_HOME"] + "/mcp-server.log", "a") as errlog:
        async with stdio_client(server, errlog=errlog) as streams, ClientSession(*streams) as session:
            await session.initialize()
            tools = await session.list_tools()
            results = [await session.call_tool(name, args) for name, args in calls]
    return tools, results


def tool_result(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    return dict(result.structured_content)


def tool_error(result: Any) -> str:
    assert result.is_error
    return str(result.content[0].text)
