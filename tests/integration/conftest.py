"""Shared by the end-to-end tests: the Airflow metadata DB, the pools, the parsed DAGs, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_airflow(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The session's Airflow metadata DB (under its AIRFLOW_HOME), migrated once, with FT-Ops' pools."""
    out = _run_airflow("db", "migrate")
    assert out.returncode == 0, out.stderr[-3000:]
    for pool in ("ftops_training", "ftops_versioning", "ftops_aliases"):
        assert _run_airflow("pools", "set", pool, "1", "test").returncode == 0


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags




@pytest.fixture(scope="session")
def airflow_cli():
    """Run ``python -m airflow ARGS`` with extra environment; returns the completed process."""
    return _run_airflow


@pytest.fixture(scope="module")
def base_model() -> Path:
    from ftops.core.config import LOCAL_BASE_MODEL, resolve_base_model
    from ftops.training.basemodel import build_base_model

    return build_base_model(Path(resolve_base_model(LOCAL_BASE_MODEL)))
