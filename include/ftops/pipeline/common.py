"""What several pipeline steps share: the dataset registry of a config, served version names, base-model
checks, MLflow artifact downloads and strict-JSON results for XCom.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from ftops.core.config import FtopsConfig, check_base_model
from ftops.datasets.versions import DatasetRegistry
from ftops.registry import models as registry

__all__ = ["check_base_model"]  # moved to ftops.core.config; imported from here by the pipeline steps


def dataset_registry(cfg: FtopsConfig) -> DatasetRegistry:
    """The config's dataset registry, a copy of its git remote (default: a bare repository beside it)."""
    repo, remote, _ = cfg.storage.resolved()
    return DatasetRegistry(repo, remote, cfg.storage.dataset_remote or str(repo.parent / "datasets-remote.git"))


def served_model_version(task_type: str, version: str) -> str:
    """The ``model_version`` string the router logs for a registered version."""
    return f"{registry.model_name(task_type)}/{version}"


def weights_artifact(tags: dict[str, str]) -> str:
    """The MLflow artifact folder holding a run's trained weights: ``adapter`` (LoRA) or ``full_model``."""
    return tags.get("ftops.weights", "adapter")


def mlflow_download(uri: str, folder: str) -> str:
    import mlflow

    return str(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))


def json_safe(value: Any) -> Any:
    """NaN and infinities (an API model's perplexity) become None: XCom is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def parse_time(value: str | None) -> datetime | None:
    """An ISO time from a version tag, in UTC when it has no offset; None when missing or not a time."""
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
