"""``ftops_rollback`` run through ``dag.test()`` against a real MLflow store: the guard runs inside the task, so a
run triggered without the MCP tool (UI, REST API, CLI) is refused too, at once and with the guard's reason; an
allowed run restores the target.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from ftops.deployment import rollout
from ftops.registry import models as registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mlflow_store")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rollback_dag():
    from airflow.dag_processing.dagbag import DagBag

    for args in (("db", "migrate"), ("pools", "set", "ftops_aliases", "1", "test")):
        out = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True,
                             env=os.environ.copy(), timeout=600, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    bag = DagBag(dag_folder=str(ROOT / "dags" / "ftops_rollback.py"))
    assert bag.import_errors == {}
    return bag.dags["ftops_rollback"]


def _version(task_type: str, **tags: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.log_text("x", "adapter/x.txt")
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/adapter", tags)


def _champion(task_type: str) -> str:
    return str(registry.alias_version(task_type, registry.CHAMPION).version)


def test_the_dag_refuses_an_archived_target_with_the_guards_message(rollback_dag, capfd) -> None:
    good, bad = _version("dagrb", decision="deploy"), _version("dagrb", decision="deploy")
    rollout.deploy("dagrb", good, 10)
    rollout.deploy("dagrb", bad, 10)
    rollout.promote_canary("dagrb", bad)
    archived = _version("dagrb", deployment="archived", decision="archive", archive_reason="accuracy gain 0.01 < 0.05")
    run = rollback_dag.test(run_conf={"task_type": "dagrb", "to_version": archived})
    log = "".join(capfd.readouterr())  # the task's log (Airflow writes it to the test's stdout)
    (ti,) = run.get_task_instances()
    assert (run.state, ti.state, ti.try_number) == ("failed", "failed", 1)  # failed at once: no retry
    assert f"v{archived} failed the deployment gate and was archived: accuracy gain 0.01 < 0.05" in log
    assert "AirflowFailException: rollback of ftops-dagrb refused" in log
    assert _champion("dagrb") == bad
    assert rollout.RESTORE_TO not in registry.client().get_model_version("ftops-dagrb", bad).tags

    allowed = rollback_dag.test(run_conf={"task_type": "dagrb", "to_version": None})  # the 'previous' alias
    assert allowed.state == "success"
    assert _champion("dagrb") == good
    assert str(registry.alias_version("dagrb", registry.PREVIOUS).version) == bad
