"""DAG integrity: parse, ids, tags, retries, params, structure, and nothing heavy or networked at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftops_airflow.common import NOT_RETRYABLE

ROOT = Path(__file__).resolve().parents[2]
DAG_IDS = {"ftops_curate", "ftops_governor", "ftops_finetune", "ftops_canary", "ftops_rollback", "ftops_erase"}
HEAVY = ("torch", "transformers", "great_expectations", "mlflow", "faiss", "pandas", "sentence_transformers",
         "peft", "dvc", "sklearn")  # fmt: skip
TAG_VOCABULARY = {"ftops", "curation", "governance", "training", "deployment"}
PARAMS = {
    "ftops_curate": {"task_types", "since", "min_rating", "target_size", "dry_run"},
    "ftops_governor": {"task_type", "force", "reason"},
    "ftops_finetune": {"task_type", "dataset_version", "backend", "base_model", "epochs", "learning_rate",
                       "batch_size", "lora_r", "method", "lora_alpha", "max_seq_len", "precision",
                       "objective", "dpo_beta", "learning_rate_multiplier", "reason", "policy", "decision_key"},  # fmt: skip
    "ftops_canary": {"task_type"},
    "ftops_rollback": {"task_type", "to_version"},
    "ftops_erase": {"user_id", "purge"},
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors_and_the_dag_ids(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_id_is_file_name_with_docs_tags_and_retries(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert Path(dag.fileloc).stem == dag_id
    assert dag.doc_md and dag_id in dag.doc_md
    assert dag.tags and set(dag.tags) <= TAG_VOCABULARY and "ftops" in dag.tags
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} has retries={task.retries}"
        assert task.retry_policy is NOT_RETRYABLE, f"{dag_id}.{task.task_id} would retry bad input"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_trigger_form_params(dagbag, dag_id: str) -> None:
    params = dagbag.dags[dag_id].params
    assert set(params.keys()) == PARAMS[dag_id]
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, f"{dag_id}.{name} lacks a title or description"


def test_schedules(dagbag) -> None:
    assert dagbag.dags["ftops_curate"].timetable.expression == "0 2 * * *"
    assert dagbag.dags["ftops_canary"].timetable.expression == "*/30 * * * *"
    assert type(dagbag.dags["ftops_finetune"].timetable).__name__ == "NullTimetable"
    assert type(dagbag.dags["ftops_rollback"].timetable).__name__ == "NullTimetable"
    assert type(dagbag.dags["ftops_erase"].timetable).__name__ == "NullTimetable"
    governor = dagbag.dags["ftops_governor"].timetable  # hourly, or when a dataset is curated
    assert governor.timetable.expression == "0 * * * *"
    assert "ftops_datasets" in repr(governor.asset_condition)


def test_finetune_structure(dagbag) -> None:
    dag = dagbag.dags["ftops_finetune"]
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert downstream["resolve_run_config"] >= {"train_candidate", "evaluate_candidate"}
    assert downstream["train_candidate"] == {"wait_for_model", "record_failure"}
    assert "evaluate_candidate" in downstream["wait_for_model"]
    wait = dag.get_task("wait_for_model")
    # an API job's hours of training hold no worker slot: the wait defers to the triggerer
    assert type(wait).__name__ == "WaitForFineTuneOperator" and set(wait.template_fields) == {"config", "trained"}
    assert "register_candidate" in downstream["evaluate_candidate"]
    assert downstream["choose_path"] == {"deploy_canary", "archive"}
    assert dag.get_task("train_candidate").pool == "ftops_training"
    # the governor's retry guard reads how each run ended: a failure of any task, or a finished branch
    failure, success = dag.get_task("record_failure"), dag.get_task("record_success")
    assert failure.trigger_rule == "one_failed" and success.trigger_rule == "none_failed_min_one_success"
    assert failure.upstream_task_ids == set(downstream) - {"record_failure", "record_success", "choose_path"}
    assert {"deploy_canary", "archive"} <= success.upstream_task_ids


def test_curate_maps_per_task_type_and_only_publishing_holds_the_versioning_pool(dagbag) -> None:
    dag = dagbag.dags["ftops_curate"]
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert set(downstream) == {"resolve_run_config", "list_task_types", "curate_dataset", "publish_dataset",
                               "report_curation"}  # fmt: skip
    assert downstream["list_task_types"] == {"curate_dataset"}
    assert downstream["curate_dataset"] == {"publish_dataset", "report_curation"}
    assert downstream["publish_dataset"] == {"report_curation"}
    curate, publish = dag.get_task("curate_dataset"), dag.get_task("publish_dataset")
    # task types curate in parallel; only the DVC publish step is serialised, and only it emits the Asset
    assert curate.pool != "ftops_versioning" and curate.outlets == []
    assert publish.pool == "ftops_versioning"
    assert [o.name for o in publish.outlets] == ["ftops_datasets"]
    # curate[i] -> publish[i] per task type (a mapped task group), so one failing task type stops no other
    group = curate.task_group
    assert group is publish.task_group and type(group).__name__ == "MappedTaskGroup"
    assert dag.get_task("report_curation").trigger_rule == "none_failed"  # skipped publishes are fine


def test_erase_holds_the_versioning_pool_and_wakes_the_governor(dagbag) -> None:
    dag = dagbag.dags["ftops_erase"]
    assert [t.task_id for t in dag.tasks] == ["erase_user_data"]
    erase = dag.get_task("erase_user_data")
    assert erase.pool == "ftops_versioning"  # never between a curation run's staging and its publishing
    assert [o.name for o in erase.outlets] == ["ftops_datasets"]


# The library entry points that move registry aliases (each calls ftops.deployment.rollout's moves).
ALIAS_MOVERS = ("ftops.pipeline.canary", "ftops.pipeline.rollback", "deploy_candidate", "ftops.deployment.rollout")


def test_every_alias_moving_task_holds_the_one_aliases_pool(dagbag) -> None:
    import inspect

    movers, others = set(), set()
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            source = inspect.getsource(task.python_callable) if hasattr(task, "python_callable") else ""
            (movers if any(m in source for m in ALIAS_MOVERS) else others).add((dag.dag_id, task.task_id))
            if (dag.dag_id, task.task_id) in movers:
                assert task.pool == "ftops_aliases", f"{dag.dag_id}.{task.task_id} moves aliases outside the pool"
            else:
                assert task.pool != "ftops_aliases", f"{dag.dag_id}.{task.task_id} holds the pool, moves nothing"
    assert movers == {("ftops_canary", "review_canary"), ("ftops_rollback", "rollback_champion"),
                      ("ftops_finetune", "deploy_canary")}  # fmt: skip
    # and the pool exists wherever pools are made: the Astro settings, the local setup, the test Airflow
    import yaml

    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())["airflow"]["pools"]
    assert {p["pool_name"]: p["pool_slot"] for p in settings}["ftops_aliases"] == 1
    assert "pools set ftops_aliases 1" in (ROOT / "scripts" / "setup_airflow.sh").read_text()


def test_governor_triggers_finetune(dagbag) -> None:
    dag = dagbag.dags["ftops_governor"]
    trigger = dag.get_task("trigger_finetune")
    assert trigger.partial_kwargs["trigger_dag_id"] == "ftops_finetune"
    assert trigger.partial_kwargs["skip_when_already_exists"] is True  # a retry never starts a second run
    assert "trigger_finetune" in dag.get_task("decide_training").downstream_task_ids  # one run per decision


def test_the_finetune_run_id_is_deterministic_and_valid_in_airflow() -> None:
    import re

    from airflow.configuration import conf

    from ftops.governance.policy import Decision
    from ftops.pipeline.governor import finetune_run_id

    def decision(policy: str, failed: int = 0) -> Decision:
        guards = {"attempts": {"inputs": {"failed_runs": [f"run{i}" for i in range(failed)]}}}
        return Decision("city_extraction", True, "why", "dataset/city_extraction/v2", policy, {"guards": guards})

    allowed = re.compile(conf.get("scheduler", "allowed_run_id_pattern"))
    one = finetune_run_id("city_extraction", decision("new_data"), run_key="scheduled__x")
    assert one == "governor__city_extraction__v2__new_data" and allowed.fullmatch(one)
    assert one == finetune_run_id("city_extraction", decision("new_data"), run_key="retry")
    assert finetune_run_id("city_extraction", decision("error_pattern"), run_key="x").endswith("__error_pattern")
    retry = finetune_run_id("city_extraction", decision("new_data", failed=1), run_key="scheduled__x")
    assert retry == one + "__retry1" and allowed.fullmatch(retry)  # after a failed fine-tune: a new run
    forced = finetune_run_id("city_extraction", decision("force"), run_key="manual__1")
    assert forced != one and allowed.fullmatch(forced)
    assert forced == finetune_run_id("city_extraction", decision("force"), run_key="manual__1")
    assert forced != finetune_run_id("city_extraction", decision("force"), run_key="manual__2")


PARSE_PROBE = r"""
import importlib.util, json, socket, sqlite3, sys
opened = []
def refuse(*a, **k):
    opened.append(repr(a[:2]))
    raise OSError("network access at parse time")
socket.socket.connect = refuse
socket.create_connection = refuse
real_sqlite = sqlite3.connect
def record_sqlite(*a, **k):
    opened.append("sqlite:" + repr(a[:1]))
    return real_sqlite(*a, **k)
sqlite3.connect = record_sqlite
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("probe_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({"heavy": sorted(m for m in sys.modules if m.split(".")[0] in %s), "opened": opened}))
"""


@pytest.mark.parametrize("dag_file", sorted((ROOT / "dags").glob("ftops_*.py")), ids=lambda p: p.stem)
def test_parsing_imports_nothing_heavy_and_opens_no_connection(dag_file: Path) -> None:
    probe = PARSE_PROBE % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe, str(dag_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"{dag_file.name} imports {result['heavy']} at parse time"
    assert result["opened"] == [], f"{dag_file.name} opened {result['opened']} at parse time"


FINETUNE_PARSE_PROBE = r"""
import importlib.util, json, os, sys
read = []
get = os._Environ.__getitem__
def record(self, key):
    frame = sys._getframe(1)  # the first caller outside os.getenv and Mapping.get: is it the project's code?
    while frame and (frame.f_code.co_filename.endswith(("_collections_abc>", "_collections_abc.py"))
                     or frame.f_code.co_filename == os.__file__):
        frame = frame.f_back
    if frame and frame.f_code.co_filename.startswith((sys.argv[2] + "/dags/", sys.argv[2] + "/include/")):
        read.append(key)
    return get(self, key)
spec = importlib.util.spec_from_file_location("probe_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
os._Environ.__getitem__ = record
spec.loader.exec_module(module)
os._Environ.__getitem__ = get
print(json.dumps({"env": sorted(set(read)), "modules": sorted(m for m in ("openai", "mlflow") if m in sys.modules)}))
"""


def test_parsing_finetune_reads_no_environment_and_imports_no_api_client() -> None:
    """The wait's interval and timeout come from the run's config snapshot, not from the environment at parse
    time (the one variable read is FTOPS_CONFIG, the config file whose ``training.queue`` the tasks are put
    on); the openai client and mlflow are imported by the task and the trigger, never by the DAG file."""
    dag_file = ROOT / "dags" / "ftops_finetune.py"
    env = {**os.environ, "FTOPS_API_POKE_SECONDS": "0.1"}
    out = subprocess.run([sys.executable, "-c", FINETUNE_PARSE_PROBE, str(dag_file), str(ROOT)], capture_output=True,
                         text=True, timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"env": ["FTOPS_CONFIG"], "modules": []}


def test_training_queue_puts_every_fine_tune_task_on_it_and_nothing_else(tmp_path, monkeypatch) -> None:
    """CeleryExecutor: `training.queue` sends ftops_finetune, and only it, to the workers listening there."""
    import yaml
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "ftops.yaml"
    config.write_text(yaml.safe_dump({"training": {"queue": "gpu"}}))
    monkeypatch.setenv("FTOPS_CONFIG", str(config))
    queues = {}
    for name in ("ftops_finetune", "ftops_curate"):
        bag = DagBag(dag_folder=str(ROOT / "dags" / f"{name}.py"))
        queues[name] = {t.queue for t in bag.dags[name].tasks}

    assert queues == {"ftops_finetune": {"gpu"}, "ftops_curate": {conf.get("operators", "default_queue")}}
