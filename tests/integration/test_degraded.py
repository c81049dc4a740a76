"""A deliberately degraded candidate is archived with its reasons, and the champion stays where it was.

Through Airflow's ``dag.test()`` with the tiny local model: ``ftops_finetune`` first trains a champion on a
good dataset version (the first passing model becomes champion), then trains a candidate on a second
version whose training responses are permuted across examples, so every prompt is paired with another
prompt's answer. The test split is the same in both versions, so the two models are compared on the same,
correctly labelled examples. The degraded model learns the reply template (it looks fluent) but not the
answer; the gate must archive it with FAIL reasons and leave the ``champion`` alias alone.

The datasets are published straight from simulator rows (curation is test_pipeline.py's subject) and this
module keeps its own dataset registry and MLflow store, through a config file in ``FTOPS_CONFIG`` and
``MLFLOW_TRACKING_URI``, so it does not disturb test_pipeline.py's counts. Only the built base model and the
Airflow database are shared with it (both under the session's ``FTOPS_HOME``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ftops_dev.simulate import clean_chat_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
ROOT = Path(__file__).resolve().parents[2]
TASK_TYPE = "city_extraction"
N_TRAIN, N_TEST = 300, 100  # the shipped full fine-tune: 10 epochs x 300 / 8 = 375 steps, ~20-40 s a model


@pytest.fixture(scope="module")
def own_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's dataset registry and MLflow store; the shipped config otherwise."""
    tmp = tmp_path_factory.mktemp("degraded")
    config = yaml.safe_load((ROOT / "include" / "config" / "ftops.yaml").read_text())
    config["storage"] = {"dataset_repo": str(tmp / "datasets"), "dvc_remote": str(tmp / "dvc-remote"),
                         "embedding_cache": str(tmp / "embeddings.db")}  # fmt: skip
    (tmp / "ftops.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_CONFIG", str(tmp / "ftops.yaml"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("FTOPS_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
        yield tmp


@pytest.fixture(scope="module")
def dags(own_stores: Path, airflow_db) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture(scope="module")
def datasets(own_stores: Path) -> dict[str, Any]:
    """v1: good rows. v2: the same rows with training responses permuted in one cycle (none keeps its own)."""
    from ftops.core.config import load_config
    from ftops.pipeline.common import dataset_registry

    rows = clean_chat_rows(TASK_TYPE, N_TRAIN + N_TEST, seed=31)
    test, train = rows[:N_TEST], rows[N_TEST:]
    registry = dataset_registry(load_config())
    good = registry.publish(TASK_TYPE, train, test, {"source": "simulator ground truth (test_degraded)"})
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    replies = {order[k]: train[order[(k + 1) % len(order)]]["messages"][-1] for k in range(len(order))}
    shuffled = [{"messages": [*row["messages"][:-1], replies[i]]} for i, row in enumerate(train)]
    moved = sum(s["messages"][-1] != t["messages"][-1] for s, t in zip(shuffled, train, strict=True))
    assert moved > 0.9 * len(train)  # the rest drew another prompt's reply naming the same city
    bad = registry.publish(TASK_TYPE, shuffled, test, {"source": "test_degraded: responses permuted"})
    assert (good.tag, bad.tag) == (f"dataset/{TASK_TYPE}/v1", f"dataset/{TASK_TYPE}/v2")
    return {"good": good, "bad": bad, "test": test}


@pytest.fixture(scope="module")
def champion(dags: dict[str, Any], datasets: dict[str, Any], base_model: Path) -> str:
    from ftops.registry import models as registry

    run = dags["ftops_finetune"].test(run_conf={"task_type": TASK_TYPE, "dataset_version": "v1"})
    assert run.state == "success"
    version = registry.alias_version(TASK_TYPE, registry.CHAMPION)
    assert version is not None and version.tags["decision"] == "deploy", version and version.tags
    return str(version.version)


@pytest.fixture(scope="module")
def degraded_run(dags: dict[str, Any], datasets: dict[str, Any], champion: str) -> Any:
    return dags["ftops_finetune"].test(run_conf={"task_type": TASK_TYPE, "dataset_version": "v2",
                                                 "reason": "deliberately degraded"})  # fmt: skip


def test_the_degraded_run_takes_the_archive_branch(degraded_run: Any) -> None:
    assert degraded_run.state == "success"
    states = {ti.task_id: ti.state for ti in degraded_run.get_task_instances()}
    assert states["archive"] == "success" and states["deploy_canary"] == "skipped", states


def test_the_degraded_version_is_registered_archived_with_its_reasons(
    degraded_run: Any, datasets: dict[str, Any], champion: str
) -> None:
    from ftops.registry import models as registry

    versions = {str(v.version): v for v in registry.versions(TASK_TYPE)}
    assert set(versions) == {champion, str(int(champion) + 1)}
    tags = versions[str(int(champion) + 1)].tags
    assert tags["dataset_version"] == datasets["bad"].tag
    assert tags["baseline"] == f"champion v{champion}"
    assert tags["decision"] == "archive" and tags["deployment"] == "archived"
    reasons = tags["reason"].split("; ")
    assert tags["archive_reason"] == tags["reason"]
    failed = [r for r in reasons if r.startswith("FAIL")]
    assert any(r.startswith("FAIL: accuracy") and "gain -" in r for r in failed), reasons
    assert any("CI [" in r and "lower bound -" in r for r in failed), reasons
    assert any(r.startswith("ok: test examples 100") for r in reasons), reasons
    # It learnt the reply's form, not its content: fluent, and wrong on the task.
    assert float(tags["metric.rouge_l"]) > 0.6  # measured 0.86 (champion 0.91) with LoRA, before issue 10
    assert float(tags["metric.accuracy"]) < float(tags["baseline.accuracy"]) - 0.15  # measured 0.06 vs 0.43 with LoRA, before issue 10


def test_the_champion_alias_is_untouched(degraded_run: Any, champion: str) -> None:
    from ftops.registry import models as registry

    assert str(registry.alias_version(TASK_TYPE, registry.CHAMPION).version) == champion
    assert registry.alias_version(TASK_TYPE, registry.CANARY) is None
    versions = {str(v.version): v for v in registry.versions(TASK_TYPE)}
    assert versions[champion].tags["deployment"] == "champion"


def test_the_evaluation_report_is_logged_with_the_interval_and_every_example(
    degraded_run: Any, champion: str, datasets: dict[str, Any]
) -> None:
    import mlflow

    from ftops.registry import models as registry

    version = next(v for v in registry.versions(TASK_TYPE) if str(v.version) != champion)
    metrics = registry.client().get_run(version.run_id).data.metrics
    assert metrics["accuracy_gain_ci_low"] <= metrics["accuracy_gain"] <= metrics["accuracy_gain_ci_high"] < 0
    report = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/evaluation/report.json")
    assert report["accuracy_gain"]["low"] == metrics["accuracy_gain_ci_low"]
    assert report["gate"]["decision"] == "archive"
    table = mlflow.artifacts.load_text(f"runs:/{version.run_id}/evaluation/report.md")
    assert "95% CI" in table and "FAIL: accuracy" in table
    lines = mlflow.artifacts.load_text(f"runs:/{version.run_id}/evaluation/outputs.jsonl").splitlines()
    examples = [json.loads(line) for line in lines]
    assert len(examples) == N_TEST
    assert [e["reference"] for e in examples] == [r["messages"][-1]["content"] for r in datasets["test"]]
    assert sum(e["candidate_correct"] for e in examples) / N_TEST == report["candidate_metrics"]["accuracy"]
