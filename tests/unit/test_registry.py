"""The MLflow registry wrapper against a real MLflow SQLite store."""

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import pytest

from ftops.deployment import rollout
from ftops.registry import models as registry

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one store per module; tests use their own task types


def _run(task_type: str, key: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tags(registry.run_key_tags(key))
        mlflow.log_text("adapter", "adapter/README.txt")
    return run.info.run_id


def test_register_is_idempotent_per_run() -> None:
    run_id = _run("idem", "k1")
    assert registry.find_run("idem", "k1") == run_id
    assert registry.find_run("idem", "other") is None
    v = registry.register("idem", run_id, "file:///x", {"dataset_version": "dataset/idem/v1"})
    assert registry.register("idem", run_id, "file:///x", {"decision": "deploy"}) == v  # crash-and-retry
    versions = registry.versions("idem")
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


@contextmanager
def _store_locked() -> Iterator[None]:
    """A real failure of the store: another connection holds SQLite's exclusive lock, so MLflow's reads fail
    ("database is locked") after its busy timeout, as they would on a store that is down or overloaded."""
    path = os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    lock = sqlite3.connect(path, timeout=0, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def test_a_failing_alias_read_leaves_every_alias_unchanged_and_is_retried() -> None:
    from ftops_airflow.common import NOT_RETRYABLE

    champion = registry.register("locked", _run("locked", "a"), "file:///a", {})
    assert rollout.deploy("locked", champion, 10) == "champion"
    candidate = registry.register("locked", _run("locked", "b"), "file:///b", {})
    with _store_locked():
        # the alias read fails: an error, not "no champion" (which would deploy the candidate as champion)
        with pytest.raises(registry.RegistryUnavailableError, match="read alias 'champion'.*locked") as failed:
            rollout.deploy("locked", candidate, 10)
    assert str(registry.alias_version("locked", registry.CHAMPION).version) == champion
    assert registry.alias_version("locked", registry.CANARY) is None
    assert registry.alias_version("locked", registry.PREVIOUS) is None
    from airflow.sdk.definitions.retry_policy import RetryAction

    decision = NOT_RETRYABLE.evaluate(failed.value, try_number=1, max_tries=3)
    assert decision.action != RetryAction.FAIL, decision  # a ConnectionError: the task's retries apply
    assert NOT_RETRYABLE.evaluate(ValueError("bad"), try_number=1, max_tries=3).action == RetryAction.FAIL


def test_only_a_missing_model_or_alias_means_none() -> None:
    assert registry.alias_version("never-registered", registry.CHAMPION) is None
    registry.register("no-alias", _run("no-alias", "a"), "file:///a", {})
    assert registry.alias_version("no-alias", registry.CHAMPION) is None
    assert registry.versions("never-registered") == []


def test_run_keys_are_looked_up_by_digest_whatever_they_contain() -> None:
    key = "manual__2026-11-30T01:00:00+00:00/it's \"quoted\" -- or 1=1"
    run_id = _run("odd-keys", key)
    assert registry.find_run("odd-keys", key) == run_id
    assert registry.find_run("odd-keys", key + " ") is None


def test_an_invalid_task_type_is_refused_before_any_query() -> None:
    from ftops.core.names import InvalidNameError

    with pytest.raises(InvalidNameError):
        registry.alias_version("x' or name != '", registry.CHAMPION)
    with pytest.raises(InvalidNameError):
        registry.model_name("../../escape")
