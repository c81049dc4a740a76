"""Task type names are refused where they enter: the trigger forms, the CLI, paths built from them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BAD_NAMES = ["../../escape", "a/b", "", "x' or '1'='1", "-leading-dash", "white space", "ü" * 3, "x" * 65]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.mark.parametrize(("dag_id", "param"), [
    ("ftops_finetune", "task_type"), ("ftops_rollback", "task_type"), ("ftops_governor", "task_type"),
    ("ftops_canary", "task_type"), ("ftops_curate", "task_types"),
])  # fmt: skip
@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_form_refuses_an_invalid_task_type(dagbag, dag_id: str, param: str, name: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags[dag_id].params)
    with pytest.raises(ParamValidationError, match="does not match"):
        params[param] = [name] if param == "task_types" else name  # the form validates what is entered
        params.validate()


@pytest.mark.parametrize("dag_id", ["ftops_finetune", "ftops_rollback", "ftops_governor", "ftops_canary"])
def test_the_form_takes_a_valid_task_type(dagbag, dag_id: str) -> None:

    params = copy.deepcopy(dagbag.dags[dag_id].params)
    params["task_type"] = "city_extraction"
    params.validate()


def test_a_rollback_must_name_its_task_type(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="task_type"):
        copy.deepcopy(dagbag.dags["ftops_rollback"].params).validate()


def test_an_erasure_must_name_a_user(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="user_id"):
        copy.deepcopy(dagbag.dags["ftops_erase"].params).validate()
    params = copy.deepcopy(dagbag.dags["ftops_erase"].params)
    with pytest.raises(ParamValidationError):
        params["user_id"] = ""
        params.validate()
    params["user_id"] = "user-42@example.com"
    params.validate()


def test_the_cli_refuses_an_invalid_task_type(capsys: pytest.CaptureFixture[str]) -> None:
    from ftops.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--rows", "5", "--task-types", "../../escape"])
    assert exited.value.code == 2
    assert "invalid task type '../../escape'" in capsys.readouterr().err


def test_no_path_built_from_a_name_leaves_its_root(tmp_path: Path) -> None:
    from ftops.core.config import FtopsConfig
    from ftops.core.names import InvalidNameError, contained_path
    from ftops.datasets.versions import DatasetRegistry
    from ftops.pipeline.finetune import checkpoint_dir

    root = tmp_path / "home"
    assert contained_path(root, "a", "b") == (root / "a" / "b").resolve()
    for parts in (["..", "x"], ["/etc/passwd"], ["a", "..", "..", "x"]):
        with pytest.raises(InvalidNameError):
            contained_path(root, *parts)
    cfg = FtopsConfig.model_validate({"storage": {"checkpoints": str(root / "ck")}})
    assert checkpoint_dir(cfg, "sentiment", "run/../../x").is_relative_to((root / "ck").resolve())
    with pytest.raises(InvalidNameError):
        checkpoint_dir(cfg, "../../escape", "run")
    registry = DatasetRegistry(root / "datasets", str(root / "remote"))
    with pytest.raises(InvalidNameError):
        registry.publish("../../escape", [{"messages": []}], [], {})
    assert not (tmp_path / "escape").exists() and not (root / "datasets").exists()  # refused before any write
