"""Upstream models: an existing OpenAI-compatible model (a hosted API, vLLM, Ollama) as a version of a task type.

``ftops register-upstream`` registers one, so the gateway forwards that task type's calls to it as champion or
canary like any other version, logs every call, and the loop can later distil its answers into a local model.
The version's run holds what to call and what it costs, never a key: the id of a connection (an Airflow
connection; outside Airflow ``AIRFLOW_CONN_<ID>`` as JSON, which holds the base URL and the key), the model's
name, and its prices per million input and output tokens. Registering the same connection, model and prices
again returns the same version (a price change is a new version: costs are reported per version).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ftops.core.names import check_task_type
from ftops.registry import models as registry

UPSTREAM = "upstream"  # the run's and version's ``backend`` tag
CONNECTION_TAG, MODEL_TAG = "upstream.connection", "upstream.model"
PRICE_INPUT_TAG, PRICE_OUTPUT_TAG = "price.input_per_mtok", "price.output_per_mtok"
# A version whose answers curation takes as targets without a user's rating (still filtered by the quality rules;
# a low rating still drops a row): typically a large upstream model that a local one is to replace (distillation).
TRUSTED_TAG = "trusted_teacher"
_CONNECTION_ID = re.compile(r"[A-Za-z0-9_]{1,100}")  # what AIRFLOW_CONN_<ID> can carry
_MAX_MODEL_CHARS = 200


@dataclass(frozen=True)
class Prices:
    """What a model's tokens cost, per million."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


def prices_of(tags: Mapping[str, Any]) -> Prices | None:
    """The prices a version's (or its run's) tags carry, or None when it has none."""
    try:
        return Prices(float(tags[PRICE_INPUT_TAG]), float(tags[PRICE_OUTPUT_TAG]))
    except (KeyError, TypeError, ValueError):
        return None


def check_upstream(connection: str, model: str, price_input: float, price_output: float) -> None:
    """Refuse what cannot be served or reported: a connection id no environment variable can name, an empty or
    unprintable model name, a negative or non-finite price."""
    if not _CONNECTION_ID.fullmatch(connection or ""):
        raise ValueError(f"connection id {connection!r}: use letters, digits and _ (up to 100), so that "
                         "AIRFLOW_CONN_<ID> can hold it outside Airflow")  # fmt: skip
    if not model or len(model) > _MAX_MODEL_CHARS or not model.isprintable() or model != model.strip():
        raise ValueError(f"model name {model!r}: 1-{_MAX_MODEL_CHARS} printable characters, no surrounding spaces")
    for name, price in (("input", price_input), ("output", price_output)):
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"price per million {name} tokens must be a finite number ≥ 0, got {price}")


def register_upstream(task_type: str, connection: str, model: str, price_input: float, price_output: float) -> str:
    """Register an upstream model as a version of ``ftops-<task_type>`` (once per connection, model and prices).

    Returns:
        The version number as a string; deploy it with :func:`ftops.deployment.rollout.deploy`.

    Raises:
        ValueError: See :func:`check_upstream`.
        RegistryUnavailableError: The registry failed to answer.
    """
    import mlflow

    check_task_type(task_type)
    check_upstream(connection, model, price_input, price_output)
    tags = {"backend": UPSTREAM, "task_type": task_type, CONNECTION_TAG: connection, MODEL_TAG: model,
            PRICE_INPUT_TAG: repr(float(price_input)), PRICE_OUTPUT_TAG: repr(float(price_output))}  # fmt: skip
    run_key = f"{UPSTREAM}/{connection}/{model}/{tags[PRICE_INPUT_TAG]}/{tags[PRICE_OUTPUT_TAG]}"
    run_id = registry.find_run(task_type, run_key)
    if run_id is None:
        with mlflow.start_run(experiment_id=registry.experiment_id(task_type), run_name=f"upstream {model}") as run:
            mlflow.set_tags({**registry.run_key_tags(run_key), **tags})
            mlflow.log_dict({"connection": connection, "model": model, "price_input_per_mtok": price_input,
                             "price_output_per_mtok": price_output}, f"{UPSTREAM}/{UPSTREAM}.json")  # fmt: skip
        run_id = run.info.run_id
    artifact_uri = registry.client().get_run(run_id).info.artifact_uri
    return registry.register(task_type, run_id, f"{artifact_uri}/{UPSTREAM}", {**tags, "decision": "deploy",
                             "reason": f"upstream model {model} through connection {connection}"})  # fmt: skip


def set_trusted(task_type: str, version: str, trusted: bool = True) -> None:
    """Mark (or unmark) a registered version as a trusted teacher: curation keeps its unrated answers.

    Raises:
        ValueError: No such version.
        RegistryUnavailableError: The registry failed to answer.
    """
    if str(version) not in {str(v.version) for v in registry.versions(task_type)}:
        raise ValueError(f"{registry.model_name(task_type)} has no version {version}")
    registry.set_tags(task_type, str(version), {TRUSTED_TAG: "true" if trusted else "false"})


def trusted_versions(task_type: str) -> frozenset[str]:
    """The ``model_version`` strings (as the gateway logs them: ``ftops-<task_type>/<version>``) of the task type's
    versions marked as trusted teachers."""
    return frozenset(f"{registry.model_name(task_type)}/{v.version}" for v in registry.versions(task_type)
                     if v.tags.get(TRUSTED_TAG) == "true")  # fmt: skip
