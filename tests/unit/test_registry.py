"""The MLflow registry wrapper against a real MLflow SQLite store."""

import mlflow
import pytest

from ftops.deployment import rollout
from ftops.registry import models as registry

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one store per module; tests use their own task types


def _run(task_type: str, key: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tag("ftops.run_key", key)
        mlflow.log_text("adapter", "adapter/README.txt")
    return run.info.run_id


def test_register_is_idempotent_per_run() -> None:
    run_id = _run("idem", "k1")
    assert registry.find_run("idem", "k1") == run_id
    assert registry.find_run("idem", "other") is None
    v = registry.register("idem", run_id, "file:///x", {"dataset_version": "dataset/idem/v1"})
    assert registry.register("idem", run_id, "file:///x", {"decision": "deploy"}) == v  # crash-and-retry
    versions = registry._versions("idem")
    assert len(versions) == 1 and versions[0].tags["decision"] == "deploy"
    assert registry.trained_dataset_versions("idem") == {"dataset/idem/v1"}


def test_first_deploy_is_champion_then_canary_promote_and_rollback() -> None:
    v1 = registry.register("t", _run("t", "a"), "file:///a", {})
    v2 = registry.register("t", _run("t", "b"), "file:///b", {})
    v3 = registry.register("t", _run("t", "c"), "file:///c", {})
    assert rollout.deploy("t", v1, 10) == "champion"
    assert rollout.deploy("t", v2, 10) == "canary"
    canary = registry.alias_version("t", registry.CANARY)
    assert str(canary.version) == v2 and canary.tags["traffic_percent"] == "10"
    assert rollout.promote_canary("t") == v2
    assert registry.alias_version("t", registry.CHAMPION).version == int(v2)
    assert registry.alias_version("t", registry.PREVIOUS).version == int(v1)
    assert registry.alias_version("t", registry.CANARY) is None
    rollout.deploy("t", v3, 10)
    assert rollout.retire_canary("t", "error rate too high") == v3
    assert registry.alias_version("t", registry.CHAMPION).version == int(v2)  # untouched by the canary's failure
    old, new = rollout.restore_champion("t")
    assert (old, new) == (v2, v1)
    assert registry.alias_version("t", registry.CHAMPION).version == int(v1)


def test_rollback_without_previous_is_a_clear_error() -> None:
    rollout.deploy("solo", registry.register("solo", _run("solo", "a"), "file:///a", {}), 10)
    with pytest.raises(LookupError, match="no 'previous' alias"):
        rollout.restore_champion("solo")
