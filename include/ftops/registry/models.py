"""The MLflow model registry: one registered model ``ftops-<task_type>`` per task type, aliases for serving.

Aliases: ``champion`` serves, ``canary`` serves the share in its version tag ``traffic_percent``, ``previous``
is the rollback target. Registration is idempotent on a run key, so a re-run after a crash between
registration and aliasing completes without a second version. Stages are deprecated and never used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ftops.core.config import ftops_home
from ftops.core.names import check_task_type, filter_literal, key_digest

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


log = logging.getLogger(__name__)
CHAMPION, CANARY, PREVIOUS = "champion", "canary", "previous"


def model_name(task_type: str) -> str:
    """The registered model (and experiment) of a task type: ``ftops-<task_type>``.

    Raises:
        InvalidNameError: The task type is not a valid name.
    """
    return f"ftops-{check_task_type(task_type)}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, or a SQLite store under ``FTOPS_HOME`` (four slashes: absolute path)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    from ftops.core.files import private_file

    return f"sqlite:///{private_file(ftops_home() / 'mlflow.db')}"  # 0600 in a 0700 FTOPS_HOME when made here


class RegistryUnavailableError(ConnectionError):
    """The MLflow tracking store cannot be reached; retryable (a ``ConnectionError``)."""


_checked: set[str] = set()  # tracking URIs this process has reached once


def client() -> MlflowClient:
    """An MLflow client on :func:`tracking_uri` (also made the process default).

    The first call per URI in a process asks the store for one experiment, so an unreachable store fails
    here, before any work, with the URI (password hidden) instead of deep inside a training run.

    Raises:
        RegistryUnavailableError: The store does not answer.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    c = MlflowClient(uri, registry_uri=uri)
    if uri not in _checked:
        try:
            c.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - MLflow wraps connection, HTTP and SQL errors alike
            raise RegistryUnavailableError(f"MLflow tracking store {_hide_password(uri)} cannot be reached: "
                                           f"{_hide_password(str(exc))[:500]}") from None  # fmt: skip
        _checked.add(uri)
    return c


def _hide_password(text: str) -> str:
    import re

    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def experiment_id(task_type: str) -> str:
    """The experiment of a task type, created when missing: artifacts under ``$FTOPS_ARTIFACT_ROOT``, else
    where a tracking server puts them (``mlflow server --serve-artifacts``: every worker uploads and downloads
    through the server), else under ``FTOPS_HOME``.

    An explicit artifact location matters for a database store: MLflow's default there is ``./mlruns``
    relative to the worker's working directory, which no other worker can read.
    """
    c = client()
    name = model_name(task_type)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = os.environ.get("FTOPS_ARTIFACT_ROOT")
    if not location and not tracking_uri().startswith(("http://", "https://", "databricks")):
        location = (ftops_home() / "mlartifacts").as_uri()
    with store_errors(f"create experiment {name}", exists_ok=True):
        return c.create_experiment(name, artifact_location=f"{location}/{name}" if location else None)
    exp = c.get_experiment_by_name(name)  # another worker created it between our get and create
    if exp is None:
        raise RegistryUnavailableError(f"experiment {name} exists and cannot be read")
    return exp.experiment_id


RUN_KEY_TAG, RUN_KEY_DIGEST_TAG = "ftops.run_key", "ftops.run_key_digest"


def run_key_tags(run_key: str) -> dict[str, str]:
    """Tags that mark a training run as a run key's: the key itself (for people) and its digest (for lookups).

    Runs are found by the digest, never by the key: a key is an Airflow run id plus a task type, which may
    hold characters an MLflow filter string cannot carry.
    """
    return {RUN_KEY_TAG: run_key, RUN_KEY_DIGEST_TAG: key_digest(run_key)}


def find_run(task_type: str, run_key: str) -> str | None:
    """The finished run of a run key, or None (makes training retry-safe)."""
    c = client()
    runs = c.search_runs(
        [experiment_id(task_type)],
        filter_string=f"tags.`{RUN_KEY_DIGEST_TAG}` = {filter_literal(key_digest(run_key))} "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def unfinished_run(task_type: str, run_key: str) -> str | None:
    """The newest run with tag ``ftops.run_key`` that did not finish (crashed, failed or killed), or None.

    A retried training task continues that run (and its checkpoints) rather than opening a second one.
    """
    c = client()
    runs = c.search_runs(
        [experiment_id(task_type)],
        filter_string=f"tags.`{RUN_KEY_DIGEST_TAG}` = {filter_literal(key_digest(run_key))} "
        "and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def versions(task_type: str) -> list[ModelVersion]:
    """Every registered version of a task type's model (none when the model does not exist yet).

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    c = client()
    with store_errors(f"list versions of {model_name(task_type)}", missing_ok=True):
        return list(c.search_model_versions(f"name = {filter_literal(model_name(task_type))}"))
    return []


def register(
    task_type: str, run_id: str, source: str, tags: Mapping[str, Any], *, model_id: str | None = None
) -> str:
    """Register a run's model as a new version of ``ftops-<task_type>``, once per run.

    Args:
        task_type: The task type.
        run_id: The training run; a version of this run already registered is returned instead.
        source: The model's URI: ``models:/<model_id>`` of a logged model, or an artifact folder (a pointer
            file for API models).
        tags: Version tags (dataset version, backend, base model, metrics, decision, reason).
        model_id: The MLflow logged model behind ``source``, if any (links the version to it).

    Returns:
        The version number as a string.
    """
    c = client()
    name = model_name(task_type)
    for mv in versions(task_type):
        if mv.run_id == run_id:
            log.info("Run %s is already %s version %s", run_id, name, mv.version)
            for k, v in tags.items():
                c.set_model_version_tag(name, mv.version, k, str(v))
            return str(mv.version)
    with store_errors(f"create registered model {name}", exists_ok=True):
        c.create_registered_model(name, description=f"FT-Ops fine-tuned models for task type {task_type}")
    mv = c.create_model_version(name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()},
                                model_id=model_id)
    log.info("Registered %s version %s from run %s", name, mv.version, run_id)
    return str(mv.version)


def registered_task_types() -> list[str]:
    """Task types that have a registered model ``ftops-<task_type>``, sorted.

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    from ftops.core.names import is_task_type

    c = client()
    names: list[str] = []
    token = None
    with store_errors("list registered models"):
        while True:
            page = c.search_registered_models("name LIKE 'ftops-%'", max_results=100, page_token=token)
            names += [m.name for m in page]
            token = page.token
            if not token:
                break
    return sorted(n.removeprefix("ftops-") for n in names if is_task_type(n.removeprefix("ftops-")))


def alias_version(task_type: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None when the model or the alias does not exist.

    Only a missing model or alias means "none". Any other failure (the store unreachable, a server error,
    a half-written database) raises, because the callers decide from "none": a candidate with no champion is
    evaluated against the untuned base model and deployed as champion with all the traffic.

    Raises:
        RegistryUnavailableError: The registry failed to answer (retryable).
    """
    c = client()
    name = model_name(task_type)
    with store_errors(f"read alias {alias!r} of {name}", missing_ok=True):
        # The model's alias map says whether the alias exists, without reading an error message.
        aliases = c.get_registered_model(name).aliases
        if alias not in aliases:
            return None
        return c.get_model_version(name, str(aliases[alias]))
    return None


def set_tags(task_type: str, version: str, tags: Mapping[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(model_name(task_type), version, k, str(v))


def model_tags(task_type: str) -> dict[str, str]:
    """The tags of the registered model ``ftops-<task_type>`` itself (not of a version); {} when it does not exist.

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    c = client()
    with store_errors(f"read tags of {model_name(task_type)}", missing_ok=True):
        return dict(c.get_registered_model(model_name(task_type)).tags)
    return {}


def set_model_tags(task_type: str, tags: Mapping[str, Any]) -> None:
    """Set tags on the registered model ``ftops-<task_type>`` itself, creating the model when missing.

    Raises:
        RegistryUnavailableError: The registry failed to answer.
    """
    c = client()
    name = model_name(task_type)
    with store_errors(f"create registered model {name}", exists_ok=True):
        c.create_registered_model(name, description=f"FT-Ops fine-tuned models for task type {task_type}")
    with store_errors(f"set tags of {name}"):
        for k, v in tags.items():
            c.set_registered_model_tag(name, k, str(v))


def trained_dataset_versions(task_type: str) -> set[str]:
    """Dataset tags that some registered version was trained on (the governor's memory)."""
    return {mv.tags.get("dataset_version", "") for mv in versions(task_type)} - {""}


@contextmanager
def store_errors(action: str, *, missing_ok: bool = False, exists_ok: bool = False) -> Iterator[None]:
    """Classify what the MLflow store raised during ``action`` by its error code, never by its message.

    ``RESOURCE_DOES_NOT_EXIST`` is swallowed with ``missing_ok`` (the caller then returns its "none"), and
    ``RESOURCE_ALREADY_EXISTS`` with ``exists_ok``; a request the store refuses (an invalid parameter)
    re-raises as it is. Everything else, MLflow's own errors with other codes as well as connection, HTTP
    and database errors, becomes a retryable :class:`RegistryUnavailableError`.

    Raises:
        RegistryUnavailableError: The store failed to answer.
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        code = exc.error_code
        if (missing_ok and code == "RESOURCE_DOES_NOT_EXIST") or (exists_ok and code == "RESOURCE_ALREADY_EXISTS"):
            return
        if code == "INVALID_PARAMETER_VALUE":
            raise
        raise RegistryUnavailableError(f"MLflow store failed to {action}: {code}: "
                                       f"{_hide_password(str(exc))[:300]}") from exc  # fmt: skip
    except (RegistryUnavailableError, ValueError, LookupError):
        raise
    except Exception as exc:  # noqa: BLE001 - connection, HTTP and SQL errors from the store's backend
        raise RegistryUnavailableError(f"MLflow store failed to {action}: {type(exc).__name__}: "
                                       f"{_hide_password(str(exc))[:300]}") from exc  # fmt: skip
