"""ftops_canary's step against a real MLflow store and a SQLite warehouse with router-style logs."""

from datetime import UTC, datetime, timedelta

import mlflow
import pytest
import sqlalchemy as sa

from ftops.core.config import FtopsConfig
from ftops.deployment import rollout
from ftops.pipeline.canary import review_canary
from ftops.pipeline.common import served_model_version
from ftops.pipeline.rollback import rollback
from ftops.registry import models as registry
from ftops.warehouse.schema import ensure_schema, insert_interactions

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one store per module; tests use their own task types


def _version(task_type: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.log_text("x", "adapter/x.txt")
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/adapter", {})


def _setup(task_type: str, tmp_path, error_every: int, age_hours: float):
    champion, canary = _version(task_type), _version(task_type)
    assert rollout.deploy(task_type, champion, 10) == "champion"
    assert rollout.deploy(task_type, canary, 10) == "canary"
    now = datetime.now(UTC)
    registry.set_tags(task_type, canary, {"deployed_at": (now - timedelta(hours=age_hours)).isoformat()})
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    logs = [
        {"id": f"{task_type}-{v}-{i}", "timestamp": now - timedelta(minutes=i), "task_type": task_type,
         "prompt": "p", "response": "r", "model_version": served_model_version(task_type, v),
         "success": not (v == canary and i % error_every == 0), "latency_ms": 200}
        for v in (champion, canary) for i in range(100)
    ]  # fmt: skip
    insert_interactions(engine, logs)
    return engine, champion, canary, now


def test_failing_canary_is_rolled_back_and_champion_untouched(tmp_path) -> None:
    engine, champion, canary, now = _setup("bad", tmp_path, error_every=5, age_hours=2)
    result = review_canary(engine, FtopsConfig(), "bad", now=now)
    assert result["action"] == "rollback" and "error rate 0.200" in result["reason"]
    assert registry.alias_version("bad", registry.CANARY) is None
    assert str(registry.alias_version("bad", registry.CHAMPION).version) == champion


def test_healthy_canary_holds_then_is_promoted(tmp_path) -> None:
    engine, champion, canary, now = _setup("good", tmp_path, error_every=1000, age_hours=30)
    young = FtopsConfig.model_validate({"canary": {"duration_hours": 48}})
    assert review_canary(engine, young, "good", now=now)["action"] == "hold"
    result = review_canary(engine, FtopsConfig(), "good", now=now)
    assert result["action"] == "promote"
    assert str(registry.alias_version("good", registry.CHAMPION).version) == canary
    assert str(registry.alias_version("good", registry.PREVIOUS).version) == champion
    assert rollback("good", None) == {"task_type": "good", "from_version": canary, "to_version": champion}
