"""``ftops status`` and the MCP requests against a real Airflow REST API (``airflow api-server``, login off).

The API server runs on its own metadata DB with the project's DAGs serialized, and no scheduler: triggered
runs stay queued (the DAGs are paused), which is all the REST API and these tests need. Started in about 12 s
here (migrate 3 s, reserialize 3 s, server 6 s).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.status_support import TASK, State, build_state, free_port, mcp_calls, tool_result

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def airflow_url(tmp_path_factory) -> Iterator[str]:
    """Airflow's REST API on a free port, set up in the background while :func:`state` builds the installation."""
    home = tmp_path_factory.mktemp("airflow-api")
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True", "AIRFLOW__API__PORT": str(port)}  # fmt: skip
    airflow = f"{shlex.quote(sys.executable)} -m airflow"
    script = (f"{airflow} db migrate && {airflow} dags reserialize && "
              f"exec {airflow} api-server --host 127.0.0.1 --port {port}")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(home / "api-server.log", "w") as log:
        server = subprocess.Popen(["bash", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
    _STARTED[url] = (server, home / "api-server.log")
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


_STARTED: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}  # API server URL -> its process and log


def _wait_for(url: str, timeout: float = 180) -> None:
    server, log = _STARTED[url]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/auth/token", timeout=2).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def state(tmp_path_factory, airflow_url: str) -> Iterator[State]:
    with pytest.MonkeyPatch.context() as mp:
        built = build_state(mp, tmp_path_factory.mktemp("operate"), FTOPS_AIRFLOW_URL=airflow_url)
        _wait_for(airflow_url)
        yield built


def test_status_joins_airflow_runs_with_their_training_progress(state: State, airflow_url: str) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from ftops.core.airflow_api import AirflowAPI
    from ftops.pipeline.status import collect_status
    from ftops.pipeline.status_text import render_status
    from ftops.registry import models as registry

    api = AirflowAPI()
    api.trigger("ftops_finetune", {"task_type": TASK, "dataset_version": "v1", "reason": "status test"},
                run_id="manual__status_active")  # fmt: skip
    done = api.trigger("ftops_finetune", {"task_type": TASK}, run_id="manual__status_done")
    token = httpx.get(f"{airflow_url}/auth/token").json()["access_token"]
    marked = httpx.patch(f"{airflow_url}/api/v2/dags/ftops_finetune/dagRuns/{done['dag_run_id']}",
                         json={"state": "success"}, headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert marked.status_code == 200, marked.text
    # the active run's training: an unfinished MLflow run under its run key, 30 of 100 steps done
    c = MlflowClient()
    run = c.create_run(registry.experiment_id(TASK), tags={**registry.run_key_tags(f"manual__status_active/{TASK}"),
                       "backend": "huggingface", "base_model": "local:tiny-gpt2", "dataset_version": state.dataset_tag})
    stamp = int(time.time() * 1000)
    c.log_batch(run.info.run_id, metrics=[Metric(k, v, stamp, 30) for k, v in {
        "train_loss": 0.9, "eta_s": 3600.0, "max_steps": 100, "tokens_per_s": 512.0, "epoch": 0.9}.items()],
        params=[])  # fmt: skip
    c.log_param(run.info.run_id, "train_examples", "12")

    status = collect_status(state.cfg, state.engine, api)
    assert status["complete"], status["problems"]
    [active] = status["active_finetunes"]
    assert (active["dag_run_id"], active["state"], active["phase"]) == ("manual__status_active", "queued", "training")
    assert active["reason"] == "status test" and active["dataset_rows"] == {"train": 12}
    assert active["progress"]["step"] == 30 and active["progress"]["fraction"] == 0.3
    assert 3000 < active["progress"]["eta_s"] <= 3600
    recent = status["recent"]
    assert (recent["succeeded"], recent["failed"], recent["success_rate"]) == (1, 0, 1.0)
    text = render_status(status)
    assert "manual__status_active  queued: training" in text and "step 30/100 (30 %)" in text
    assert "1 succeeded, 0 failed (100 % success)" in text

    out = subprocess.run([sys.executable, "-m", "ftops.cli", "status"], env=state.env, capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0 and "unreachable" not in out.stdout, out.stdout + out.stderr[-2000:]


def test_accepted_requests_trigger_dag_runs_and_are_recorded(state: State) -> None:
    from ftops.core.airflow_api import AirflowAPI
    from ftops.registry import models as registry
    from ftops.warehouse.state import read_decisions

    # the canary held training back (tests/unit/test_status_mcp.py); it is gone now
    registry.client().delete_registered_model_alias(registry.model_name(TASK), registry.CANARY)
    rollback_to_previous = ("request_rollback", {"task_type": TASK, "reason": "v2 answers in the wrong language"})
    ask = ("request_training", {"task_type": TASK, "reason": "labelling guide v2"})
    _, (training, rollback) = anyio.run(mcp_calls, state, [ask, rollback_to_previous])
    api = AirflowAPI()

    t = tool_result(training)
    assert t["accepted"] and t["dag_id"] == "ftops_governor" and t["dag_paused"] is True
    run = api.dag_run("ftops_governor", t["dag_run_id"])
    assert run["conf"] == {"task_type": TASK, "force": True, "reason": "labelling guide v2"}
    r = tool_result(rollback)
    assert r["accepted"] and r["conf"] == {"task_type": TASK, "to_version": "1"}  # 'previous', resolved
    assert api.dag_run("ftops_rollback", r["dag_run_id"])["conf"] == r["conf"]

    recorded = {d["decision_key"]: d for d in read_decisions(state.engine, TASK) if d["kind"].endswith("_request")}
    assert recorded[t["decision_key"]]["train"] and recorded[t["decision_key"]]["run_id"] == t["dag_run_id"]
    assert recorded[r["decision_key"]]["run_id"] == r["dag_run_id"]
    assert "token" not in json.dumps([t, r]).lower()
