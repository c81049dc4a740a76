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


def test_every_field_of_every_form_has_a_title_a_description_and_a_section(dagbag) -> None:
    """The trigger forms are the UI of the DAGs: each field says what it is and sits in a named section (Airflow
    3.3 cannot show a field only for one backend, so the fine-tune form has a section per backend)."""
    missing = [f"{dag_id}.{name}: {key}" for dag_id, dag in sorted(dagbag.dags.items()) for name in dag.params
               for key, value in _form_field(dag.params.get_param(name)).items() if not value]  # fmt: skip
    assert not missing, "form fields without a title, description or section:\n" + "\n".join(missing)
    finetune = dagbag.dags["ftops_finetune"].params
    sections = {name: finetune.get_param(name).schema["section"] for name in finetune}
    assert {sections[n] for n in ("method", "learning_rate", "lora_r", "lora_alpha", "max_seq_len", "precision",
                                  "objective", "dpo_beta")} == {"Hugging Face backend"}
    assert sections["learning_rate_multiplier"] == "OpenAI backend"
    for name in ("backend", "method", "precision", "objective"):  # enums are dropdowns; each choice reads as words
        schema = finetune.get_param(name).schema
        assert schema["enum"] and set(schema["values_display"]) == {v for v in schema["enum"] if v is not None}


def _form_field(param) -> dict[str, str | None]:
    return {"title": param.schema.get("title"), "description": param.description, "section": param.schema.get("section")}
