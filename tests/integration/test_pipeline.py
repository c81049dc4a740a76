"""End to end through Airflow's ``dag.test()`` on embedded defaults, with the tiny local model.

One module-scoped story: simulate logs → ftops_curate → ftops_governor decides → ftops_finetune trains,
evaluates, registers and deploys. Plus ``airflow dags test ftops_curate`` against the local PostgreSQL server.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TASK_TYPE = "city_extraction"  # the simulator task the tiny model learns best in a CI-sized run


@pytest.fixture(scope="module")
def task_logs(tmp_path_factory) -> Path:
    """Everything the tasks log while this module runs (dag.test runs them in this process), in one file."""
    path = tmp_path_factory.mktemp("logs") / "tasks.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


# The sensitive value inside each kind of sentence the simulator plants in prompts.
_PLANTED = [r"My email is (\S+), please", r"call me at (.+?) if needed", r"Use my card (.+?) for the order",
            r"\(request from (.+?)\)", r"OPENAI_API_KEY=(\S+)", r"aws_access_key_id = (\S+)", r"github token is (\S+)"]


@pytest.fixture(scope="module")
def planted() -> list[str]:
    """Filled with every PII value and secret the simulator plants (see ``simulated_logs``)."""
    return []


@pytest.fixture(scope="module")
def simulated_logs(task_logs, planted) -> list[dict]:
    from ftops_dev import simulate

    from ftops.cli import warehouse_url
    from ftops.warehouse.schema import ensure_schema, insert_interactions

    real_pii = simulate._pii

    def recording_pii(rng):
        sentence = real_pii(rng)
        planted.extend(m.group(1) for p in _PLANTED if (m := re.search(p, sentence)))
        return sentence

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulate, "_pii", recording_pii)
        rows = simulate.generate_interactions(1500, seed=7, task_types=[TASK_TYPE])
    assert len(planted) >= 40, planted  # about 5 % of the rows carry one
    engine = sa.create_engine(warehouse_url())
    ensure_schema(engine)
    insert_interactions(engine, rows)
    return rows


@pytest.fixture(scope="module")
def curated(dags, simulated_logs) -> dict:
    run = dags["ftops_curate"].test(run_conf={"task_types": [TASK_TYPE]})
    assert run.state == "success"
    from ftops.core.config import load_config
    from ftops.pipeline.common import dataset_registry

    registry = dataset_registry(load_config())
    version = registry.latest(TASK_TYPE)
    assert version is not None
    return {"version": version, "metadata": registry.read_metadata(version), "registry": registry}


def test_curation_versions_a_dataset_and_accounts_for_every_row(curated, simulated_logs) -> None:
    meta = curated["metadata"]
    assert curated["version"].tag == f"dataset/{TASK_TYPE}/v1"
    assert sum(meta["accounting"].values()) == meta["rows_read"] == len(simulated_logs)
    assert meta["accounting"]["accepted"] == meta["train_rows"] + meta["test_rows"] >= 100
    assert meta["validation"]["raw"]["success"] is True and meta["validation"]["curated"]["success"] is True
    assert meta["scrubbed"] and meta["diversity_score"] > 0 and meta["window"]["until"]
    assert meta["max_cross_split_similarity"] < meta["config"]["diversity_threshold"]
    train = curated["registry"].read(curated["version"], "train")
    assert all(row["messages"][-1]["role"] == "assistant" for row in train)


def test_recurating_the_same_logs_makes_no_new_version(dags, curated) -> None:
    run = dags["ftops_curate"].test(run_conf={"task_types": [TASK_TYPE]})
    assert run.state == "success"
    assert [v.tag for v in curated["registry"].versions(TASK_TYPE)] == [curated["version"].tag]


def test_a_failing_task_type_does_not_stop_the_others(dags, curated) -> None:
    from ftops_dev.simulate import generate_interactions

    from ftops.cli import warehouse_url
    from ftops.warehouse.schema import insert_interactions

    broken = generate_interactions(40, seed=11, task_types=["sentiment"])
    for i, r in enumerate(broken):
        r["task_type"], r["id"] = "broken_feed", f"broken-{i}"
        r["latency_ms"] = -1  # every row malformed: the raw suite fails this task type
    insert_interactions(sa.create_engine(warehouse_url()), broken)
    run = dags["ftops_curate"].test(run_conf={"task_types": [TASK_TYPE, "broken_feed"]})
    states = {ti.map_index: ti.state for ti in run.get_task_instances() if ti.task_id == "curate_dataset"}
    assert states == {0: "success", 1: "failed"}
    assert [v.tag for v in curated["registry"].versions(TASK_TYPE)] == [curated["version"].tag]


def _finetune_runs() -> dict[str, dict]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.scalars(sa.select(DagRun).where(DagRun.dag_id == "ftops_finetune"))
        return {r.run_id: dict(r.conf or {}) for r in runs}


@pytest.fixture(scope="module")
def governed(dags, curated) -> dict:
    """The governor's decision to train, and the conf of the one ftops_finetune run it started."""
    from ftops.cli import warehouse_url
    from ftops.warehouse.state import read_decisions

    before = _finetune_runs()  # other modules' runs share this Airflow database
    run = dags["ftops_governor"].test(run_conf={"task_type": TASK_TYPE})
    assert run.state == "success"
    latest = read_decisions(sa.create_engine(warehouse_url()), TASK_TYPE)[0]
    return {"decision": latest, "runs": {k: v for k, v in _finetune_runs().items() if k not in before}, "before": before}


def test_governor_decides_to_train_records_why_and_starts_one_fine_tune(dags, governed, curated) -> None:
    from ftops.cli import warehouse_url
    from ftops.warehouse.state import read_decisions

    latest = governed["decision"]
    assert latest["train"] and latest["dataset_version"] == curated["version"].tag and latest["kind"] == "training"
    assert latest["policy"] == "new_data" and re.search(r"has \d+ examples \(no champion yet\)",
                                                        latest["reason"]), latest["reason"]  # fmt: skip
    assert latest["details"]["policies"]["new_data"]["inputs"]["new_examples"] >= 100
    run_id = f"governor__{TASK_TYPE}__v1__new_data"
    assert latest["run_id"] == run_id and set(governed["runs"]) == {run_id}
    conf = governed["runs"][run_id]
    assert conf["reason"] == latest["reason"] and conf["decision_key"] == latest["decision_key"]
    # the governor again while that fine-tune is queued: it waits and says why; no second run
    again = dags["ftops_governor"].test(run_conf={"task_type": TASK_TYPE})
    assert again.state == "success" and set(_finetune_runs()) - set(governed["before"]) == {run_id}
    waiting = read_decisions(sa.create_engine(warehouse_url()), TASK_TYPE)[0]
    assert not waiting["train"] and "has not finished yet" in waiting["reason"]


def test_finetune_raises_accuracy_registers_with_lineage_and_deploys(dags, curated, governed, base_model) -> None:
    from ftops.registry import models as registry

    # the conf the governor handed to its run (dag.test runs it under a run id of its own)
    conf = governed["runs"][governed["decision"]["run_id"]]
    run = dags["ftops_finetune"].test(run_conf=conf)
    assert run.state == "success"
    versions = registry.versions(TASK_TYPE)
    assert len(versions) == 1
    tags = versions[0].tags
    assert tags["dataset_version"] == curated["version"].tag
    assert tags["content_hash"] == curated["version"].content_hash
    # the decision that started it travels to the model version
    assert tags["trigger_reason"] == governed["decision"]["reason"] and tags["ftops.policy"] == "new_data"
    assert tags["ftops.decision_key"] == governed["decision"]["decision_key"]
    gain = float(tags["metric.accuracy"]) - float(tags["baseline.accuracy"])
    assert gain >= 0.15, f"fine-tuning gained only {gain:.3f} accuracy: {tags}"  # measured +0.35 on 100 prompts with LoRA, before issue 10
    assert float(tags["metric.perplexity"]) < float(tags["baseline.perplexity"])
    assert tags["decision"] == "deploy"
    assert str(registry.alias_version(TASK_TYPE, registry.CHAMPION).version) == str(versions[0].version)
    client = registry.client()
    mlrun = client.get_run(versions[0].run_id)
    assert mlrun.inputs.dataset_inputs[0].dataset.name == curated["version"].tag
    assert mlrun.data.metrics["train_final_loss"] < mlrun.data.metrics["train_first_loss"]
    # it beats the constant answer too, not only the untuned base model
    assert float(tags["metric.accuracy"]) > float(tags["trivial.accuracy"]), tags
    assert "ok: accuracy" in tags["reason"] and "vs trivial baseline" in tags["reason"]


def test_explain_model_traces_the_champion_to_its_decision_through_mcp(governed, curated) -> None:
    """What the governor decided, read back through ``ftops mcp`` by the MCP SDK's own client."""
    import os

    import anyio

    from tests.status_support import State, mcp_calls, tool_result

    state = State(dict(os.environ), None, None, curated["version"].tag, None)
    _, [explained] = anyio.run(mcp_calls, state, [("explain_model", {"task_type": TASK_TYPE, "version": 1})])
    e = tool_result(explained)
    decision = governed["decision"]
    assert e["dataset"]["version"] == curated["version"].tag and e["aliases"] == ["champion"]
    assert e["training"]["policy"] == "new_data" and e["training"]["decision_key"] == decision["decision_key"]
    assert e["trigger_decision"]["reason"] == decision["reason"] and e["gate"]["decision"] == "deploy"


def test_the_summary_shows_what_the_deployed_model_says(dags, capsys) -> None:
    from ftops.cli import main

    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    section = out[out.index(f"[{TASK_TYPE}]") :]
    assert "[champion]" in section and "trivial" in section
    counts = re.search(r"answers: (\d+) distinct to (\d+) test prompts \(the references: (\d+) distinct\)", section)
    assert counts, section
    distinct, total, references = (int(x) for x in counts.groups())
    print(section)  # look at what the model says
    # a model that answers the same few things to every prompt fails, whatever its score
    assert total >= 20 and distinct >= max(2, references // 2), f"{distinct} distinct answers, {references} references"
    assert section.count("\n        -> ") == 3


@pytest.fixture
def postgres_config(postgres_url, tmp_path) -> tuple[Path, str]:
    table = f"ftops_it_{uuid.uuid4().hex[:8]}"
    config = yaml.safe_load((ROOT / "include" / "config" / "ftops.yaml").read_text())
    config["interactions_table"] = table
    config["storage"] = {"dataset_repo": str(tmp_path / "datasets"), "dvc_remote": str(tmp_path / "remote"),
                         "embedding_cache": str(tmp_path / "emb.db")}  # fmt: skip
    path = tmp_path / "ftops.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, table
    with sa.create_engine(postgres_url).begin() as conn:
        conn.exec_driver_sql(f"drop table if exists {table}")
        conn.exec_driver_sql(f"drop table if exists {table}_quarantine")
        conn.exec_driver_sql(f"drop table if exists {table}_curated")
        conn.exec_driver_sql(f"delete from ftops_curation_runs where log_table = '{table}'")


def test_airflow_dags_test_curate_on_postgres(airflow_db, airflow_cli, postgres_url, postgres_config, tmp_path) -> None:
    from ftops_dev.simulate import generate_interactions

    from ftops.warehouse.logread import read_interactions
    from ftops.warehouse.schema import ensure_schema, insert_interactions

    config_path, table = postgres_config
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, table)
    insert_interactions(engine, generate_interactions(600, seed=3, task_types=["city_extraction"]), table)
    env = {
        "AIRFLOW_CONN_FTOPS_WAREHOUSE": "postgresql://postgres@127.0.0.1:5432/test",
        "FTOPS_CONFIG": str(config_path),
    }
    out = airflow_cli("dags", "test", "ftops_curate", "-c", json.dumps({"task_types": ["city_extraction"]}), env=env)
    assert out.returncode == 0 and "state=success" in out.stdout + out.stderr, (out.stdout + out.stderr)[-4000:]
    tags = subprocess.run(["git", "tag"], cwd=tmp_path / "datasets", capture_output=True, text=True).stdout.split()
    assert tags == ["dataset/city_extraction/v1"]
    assert len(read_interactions(engine, "city_extraction", table=table)) == 600


def test_finetune_on_a_missing_dataset_version_fails_at_once_and_registers_nothing(dags, curated) -> None:
    from ftops.registry import models as registry

    run = dags["ftops_finetune"].test(run_conf={"task_type": TASK_TYPE, "dataset_version": "v99"})
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["resolve_run_config"] == "failed" and states["train_candidate"] != "success"
    # and the governor's retry guard hears of it
    from ftops.cli import warehouse_url
    from ftops.warehouse.state import training_outcomes

    assert states["record_failure"] == "success" and states["record_success"] != "success"
    outcome = training_outcomes(sa.create_engine(warehouse_url()), TASK_TYPE)[run.run_id]
    assert outcome["status"] == "failed" and outcome["dataset_version"] == "v99"
    assert all(v.tags.get("dataset_version") != f"dataset/{TASK_TYPE}/v99" for v in registry.versions(TASK_TYPE))


def test_planted_pii_and_secrets_appear_nowhere_downstream(curated, planted, task_logs) -> None:
    """Runs last in this module, after curation, governance and fine-tuning have written everything."""
    from ftops.cli import warehouse_url
    from ftops.core.config import ftops_home

    home = ftops_home()
    scanned = [p for p in home.rglob("*") if p.is_file() and p.name != "warehouse.db"]  # raw logs live there
    scanned.append(task_logs)
    assert any("mlflow" in str(p) for p in scanned) and any("dvc-remote" in str(p) for p in scanned)
    values = sorted(set(planted))
    leaks = {str(p): [v for v in values if v.encode() in p.read_bytes()] for p in scanned}
    assert {p: v for p, v in leaks.items() if v} == {}
    # FT-Ops' own tables in the warehouse hold scrubbed copies only
    with sa.create_engine(warehouse_url()).connect() as conn:
        stored = [str(r) for t in ("interactions_quarantine", "interactions_curated", "ftops_curation_runs",
                                   "ftops_decisions") for r in conn.exec_driver_sql(f"select * from {t}")]  # fmt: skip
    assert len(stored) > 100
    assert [v for v in values if any(v in row for row in stored)] == []
