"""``ftops_finetune`` with the OpenAI-compatible backend, end to end through ``dag.test()``, against a local
server that speaks the OpenAI API (tests/fake_openai.py), reached through the real ``openai`` client and the
``openai_default`` connection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TASK_TYPE = "api_sentiment"  # a task type of its own: other end-to-end modules share the registries
API_KEY = "sk-test-ftops-e2e-0123456789abcdefghijklmnop"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import yaml

    # The shipped config with the openai backend polling every 0.05 s: read by resolve_run_config when a run
    # starts (FTOPS_CONFIG), never when the DAG file is parsed.
    config = yaml.safe_load((ROOT / "include" / "config" / "ftops.yaml").read_text())
    config["training"]["backend"] = {"kind": "openai", "poll_seconds": 0.05}
    path = tmp_path_factory.mktemp("config") / "ftops.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as mp, FakeOpenAI(api_key=API_KEY) as fake:
        mp.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps({"conn_type": "openai", "host": fake.base_url,
                                                             "password": API_KEY}))  # fmt: skip
        mp.setenv("FTOPS_CONFIG", str(path))
        mp.setenv("OPENAI_API_KEY", "sk-from-the-worker-environment-never-used")
        yield fake


@pytest.fixture(scope="module")
def api_dags(server, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert type(bag.dags["ftops_finetune"].get_task("wait_for_model")).__name__ == "WaitForFineTuneOperator"
    return bag.dags


@pytest.fixture(scope="module")
def dataset() -> str:
    from ftops_dev.simulate import generate_interactions

    from ftops.core.config import load_config
    from ftops.curation.curate import to_example
    from ftops.curation.rules import split_of
    from ftops.pipeline.common import dataset_registry

    rows = [r for r in generate_interactions(400, seed=5, task_types=["sentiment"])
            if r["success"] and (r["user_feedback"] or 0) >= 4 and len(r["prompt"]) < 2000]  # fmt: skip
    unique = {r["prompt"]: r for r in rows}.values()
    examples = [(split_of(r["prompt"], 0.2), to_example(r["prompt"], r["response"])) for r in unique]
    version = dataset_registry(load_config()).publish(
        TASK_TYPE, [e for s, e in examples if s == "train"], [e for s, e in examples if s == "test"],
        {"source": "test_openai_pipeline"},
    )  # fmt: skip
    return version.tag


def _conf(**extra) -> dict:
    return {"task_type": TASK_TYPE, "backend": "openai", "reason": "API end-to-end test", **extra}


def test_api_fine_tune_survives_a_lost_create_response_with_one_job_and_registers_it(api_dags, server, dataset,
                                                                                      caplog, tmp_path) -> None:
    from ftops.registry import models as registry

    server.lose_create_response = True  # the job is created, the response is a 500: the client sees a failure
    run = api_dags["ftops_finetune"].test(run_conf=_conf())
    server.lose_create_response = False
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["wait_for_model"] == "success", states
    # the create's response was lost; the job was found by its idempotency key instead of created again
    assert server.calls["POST /v1/fine_tuning/jobs"] == 1 and len(server.jobs) == 1
    assert "exists: using it" in caplog.text
    (job,) = server.jobs
    assert job["status"] == "succeeded" and job["metadata"]["dataset_version"] == dataset
    (version,) = registry.versions(TASK_TYPE)
    tags = version.tags
    assert tags["backend"] == "openai" and tags["dataset_version"] == dataset
    run_tags = registry.client().get_run(version.run_id).data.tags
    assert run_tags["openai.fine_tuned_model"] == job["fine_tuned_model"]
    assert tags["decision"] in ("deploy", "archive") and tags["reason"]
    assert states["deploy_canary" if tags["decision"] == "deploy" else "archive"] == "success"
    # dag.test ran the trigger in-process: it streamed each of the job's events into the log once
    assert "[DAG TEST] running trigger in line" in caplog.text
    job_log = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{job['id']}] ")]
    assert len(job_log) == len(set(job_log)) and job_log[-1].endswith("The job has successfully completed")
    assert run_tags["openai.status"] == "succeeded" and run_tags["openai.last_event_id"]
    recorded = registry.client().download_artifacts(version.run_id, "openai/events.json", str(tmp_path))
    events = json.loads(Path(recorded).read_text())  # recorded by the task when it resumed
    assert [e["message"] for e in events["events"]][-1] == "The job has successfully completed"
    assert API_KEY not in caplog.text
    assert set(server.api_keys_seen) == {API_KEY}  # never the worker's OPENAI_API_KEY


def test_an_api_job_that_fails_fails_the_run_with_the_apis_message_and_registers_nothing(api_dags, server,
                                                                                          dataset, caplog) -> None:
    from ftops.registry import models as registry

    before = len(registry.versions(TASK_TYPE))
    server.fail_next_job = True
    run = api_dags["ftops_finetune"].test(run_conf=_conf())
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["wait_for_model"] == "failed", states
    assert states["evaluate_candidate"] != "success"
    assert server.failure_error["message"] in caplog.text
    assert len(registry.versions(TASK_TYPE)) == before
    assert API_KEY not in caplog.text and set(server.api_keys_seen) == {API_KEY}


def test_a_task_retried_after_its_job_was_created_finds_the_job_and_its_run(server, dataset, monkeypatch) -> None:
    """The worker dies between creating the job and recording it on the MLflow run; the retry (same run key)
    finds the job by its idempotency key and continues the same MLflow run: one job, one run."""
    import mlflow

    from ftops.core.config import apply_overrides, load_config
    from ftops.core.openai_api import make_client
    from ftops.pipeline.common import dataset_registry
    from ftops.pipeline.finetune_api import JOB_TAG, submit_candidate
    from ftops.registry import models as registry

    cfg = apply_overrides(load_config(), {"training.backend.kind": "openai"})
    client = make_client(API_KEY, server.base_url)
    jobs, creates = len(server.jobs), server.calls["POST /v1/fine_tuning/jobs"]
    record = mlflow.set_tag

    def crash(key: str, value: str) -> None:
        if key == JOB_TAG:
            raise ConnectionError("worker lost right after the job was created")
        record(key, value)

    monkeypatch.setattr(mlflow, "set_tag", crash)
    with pytest.raises(ConnectionError):
        submit_candidate(client, cfg, TASK_TYPE, dataset, run_key="retry-after-create")
    monkeypatch.setattr(mlflow, "set_tag", record)
    assert len(server.jobs) == jobs + 1  # the first attempt did create it
    (crashed,) = registry.client().search_runs([registry.experiment_id(TASK_TYPE)],
                                               "tags.`ftops.run_key` = 'retry-after-create'")  # fmt: skip
    assert crashed.info.status == "FAILED"

    retried = submit_candidate(client, cfg, TASK_TYPE, dataset, run_key="retry-after-create")
    assert len(server.jobs) == jobs + 1 and server.calls["POST /v1/fine_tuning/jobs"] == creates + 1
    assert retried["job_id"] == server.jobs[-1]["id"] and retried["run_id"] == crashed.info.run_id
    runs = registry.client().search_runs([registry.experiment_id(TASK_TYPE)],
                                         "tags.`ftops.run_key` = 'retry-after-create'")  # fmt: skip
    assert [r.info.run_id for r in runs] == [crashed.info.run_id]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags[JOB_TAG] == retried["job_id"]

    # The job has a validation file: rows carved from the train split (none of the gate's test rows), as
    # many as the run's params say, none of them also uploaded to train on.
    job, params = server.jobs[-1], runs[0].data.params
    uploaded = {name: [json.loads(line)["messages"] for line in server.file_contents[job[name]].decode().splitlines()]
                for name in ("training_file", "validation_file")}  # fmt: skip
    assert len(uploaded["validation_file"]) == int(params["validation_examples"]) >= 10
    assert len(uploaded["training_file"]) == int(params["train_examples"])
    datasets = dataset_registry(cfg)
    test_prompts = {r["messages"][-2]["content"] for r in datasets.read(datasets.get(TASK_TYPE, dataset), "test")}
    validation_prompts = {m[-2]["content"] for m in uploaded["validation_file"]}
    assert not validation_prompts & test_prompts
    assert not validation_prompts & {m[-2]["content"] for m in uploaded["training_file"]}


def test_a_job_past_its_timeout_is_cancelled_by_the_resumed_wait_and_fails_it(server, dataset) -> None:
    """The trigger fires when the job is older than ``timeout_hours`` (counted from its creation); the task,
    resumed, cancels the job, records it on the MLflow run and fails."""
    import asyncio

    from ftops.core.config import apply_overrides, load_config
    from ftops.core.openai_api import make_client
    from ftops.pipeline.finetune_api import submit_candidate
    from ftops.registry import models as registry
    from ftops.training.openai_jobs import FineTuneJobFailed
    from ftops_airflow.openai_wait import FineTuneJobTrigger, WaitForFineTuneOperator

    cfg = apply_overrides(load_config(), {"training.backend.kind": "openai", "training.backend.timeout_hours": 1})
    trained = submit_candidate(make_client(API_KEY, server.base_url), cfg, TASK_TYPE, dataset, run_key="timeout")
    server.age_job(trained["job_id"], 2 * 3600)
    trigger = FineTuneJobTrigger(conn_id="openai_default", job_id=trained["job_id"], poll_seconds=0.05,
                                 timeout_hours=1)  # fmt: skip
    event = asyncio.run(anext(trigger.run())).payload
    assert event["outcome"] == "timeout" and server.job(trained["job_id"])["status"] != "cancelled"
    wait = WaitForFineTuneOperator(task_id="wait_for_model", config=cfg.model_dump(mode="json"), trained=trained)
    # 2.0 h, or a little more when a loaded machine takes minutes between ageing the job and resuming
    with pytest.raises(FineTuneJobFailed, match=r"after 2\.\d h \(timeout_hours 1\): cancelled"):
        wait.execute_complete({}, event)
    assert server.job(trained["job_id"])["status"] == "cancelled"
    assert registry.client().get_run(trained["run_id"]).data.tags["openai.status"] == "cancelled (timeout)"
