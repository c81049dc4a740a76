"""``ftops_curate`` run through ``dag.test()`` on a small embedded warehouse of its own.

Task types curate apart and only publishing holds the versioning pool; a task type whose name is invalid is
quarantined without stopping the others; and the ``ftops_datasets`` Asset hears only of what was published:
nothing for a window with no new rows, a dry run or an invalid task type (their ``publish_dataset`` is skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ESCAPE = "../../escape"


def _airflow(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module")
def curate_dag():
    from airflow.dag_processing.dagbag import DagBag

    _airflow("db", "migrate")
    _airflow("pools", "set", "ftops_versioning", "1", "test")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["ftops_curate"]


@pytest.fixture
def small_warehouse(tmp_path: Path, monkeypatch) -> sa.Engine:
    """FTOPS_HOME and a config of this test's own; 80 simulated sentiment rows and 10 under an invalid name."""
    from ftops_dev.simulate import generate_interactions

    from ftops.warehouse.schema import ensure_schema, insert_interactions

    home = tmp_path / "home"
    monkeypatch.setenv("FTOPS_HOME", str(home))
    config = yaml.safe_load((ROOT / "include" / "config" / "ftops.yaml").read_text())
    config["curation"]["min_examples"] = 5
    (tmp_path / "ftops.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("FTOPS_CONFIG", str(tmp_path / "ftops.yaml"))
    rows = generate_interactions(90, seed=5, task_types=["sentiment"])
    for i, r in enumerate(rows[:10]):
        r["task_type"], r["id"] = ESCAPE, f"escape-{i}"
    home.mkdir()
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")  # the embedded default the DAG falls back on
    ensure_schema(engine)
    insert_interactions(engine, rows)
    return engine


def _states(run, task_id: str) -> dict[str, str]:
    return {ti.rendered_map_index: ti.state for ti in run.get_task_instances() if ti.task_id == task_id}


def _report(run) -> tuple[str, dict]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        (xcom,) = session.scalars(sa.select(XComModel).where(
            XComModel.dag_id == "ftops_curate", XComModel.run_id == run.run_id,
            XComModel.task_id == "report_curation"))  # fmt: skip
        return (xcom.key, XComModel.deserialize_value(xcom))


def _events(run) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        query = sa.select(AssetEvent).where(AssetEvent.source_dag_id == "ftops_curate",
                                            AssetEvent.source_run_id == run.run_id)  # fmt: skip
        return [dict(e.extra or {}) for e in session.scalars(query)]


def test_only_published_datasets_emit_asset_events(curate_dag, small_warehouse, tmp_path: Path) -> None:
    from ftops.core.config import load_config
    from ftops.pipeline.common import dataset_registry

    first = curate_dag.test()
    assert first.state == "success"
    assert _states(first, "curate_dataset") == {ESCAPE: "success", "sentiment": "success"}
    assert _states(first, "publish_dataset") == {ESCAPE: "skipped", "sentiment": "success"}
    assert _report(first) == ("return_value", {ESCAPE: "invalid_task_type", "sentiment": "dataset/sentiment/v1"})
    (event,) = _events(first)
    assert (event["task_type"], event["status"], event["dataset_version"]) == ("sentiment", "versioned",
                                                                               "dataset/sentiment/v1")  # fmt: skip
    with small_warehouse.connect() as conn:
        stored = conn.exec_driver_sql("select reason, count(*) from interactions_quarantine where task_type = ? "
                                      "group by reason", (ESCAPE,)).all()  # fmt: skip
    assert [tuple(r) for r in stored] == [("invalid_task_type", 10)]
    assert not (tmp_path / "home" / ESCAPE).resolve().exists()

    no_new_rows = curate_dag.test()
    assert no_new_rows.state == "success"
    assert _states(no_new_rows, "publish_dataset") == {ESCAPE: "skipped", "sentiment": "skipped"}
    assert _events(no_new_rows) == []
    assert _report(no_new_rows)[1] == {ESCAPE: "invalid_task_type", "sentiment": "no_new_rows"}

    dry_run = curate_dag.test(run_conf={"dry_run": True, "since": "2020-01-01T00:00:00+00:00"})  # re-reads all
    assert dry_run.state == "success"
    assert _states(dry_run, "publish_dataset") == {ESCAPE: "skipped", "sentiment": "skipped"}
    assert _events(dry_run) == []
    assert _report(dry_run)[1] == {ESCAPE: "invalid_task_type", "sentiment": "dry_run"}
    assert [v.tag for v in dataset_registry(load_config()).versions("sentiment")] == ["dataset/sentiment/v1"]
