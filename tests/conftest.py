"""Test-wide settings: a throw-away FTOPS_HOME and AIRFLOW_HOME unless the caller set others than the demo's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Never the demo's state: `. scripts/env.sh` points FTOPS_HOME (and AIRFLOW_HOME) at the project's .ftops/,
# whose warehouse watermark and registries would change what the end-to-end tests read and count.
_DEMO_HOME = str(ROOT / ".ftops")
if os.environ.get("FTOPS_HOME", _DEMO_HOME) == _DEMO_HOME:
    os.environ["FTOPS_HOME"] = tempfile.mkdtemp(prefix="ftops-test-")
    if os.environ.get("AIRFLOW_HOME", "").startswith(_DEMO_HOME):
        del os.environ["AIRFLOW_HOME"]
os.environ.setdefault("AIRFLOW_HOME", os.path.join(os.environ["FTOPS_HOME"], "airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
for key, value in {"GX_ANALYTICS_ENABLED": "False", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():  # fmt: skip
    os.environ.setdefault(key, value)

POSTGRES_URL = os.environ.get("FTOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The local PostgreSQL server; skipped when unreachable unless FTOPS_REQUIRE_POSTGRES=1 (set in CI)."""
    import sqlalchemy as sa

    try:
        with sa.create_engine(POSTGRES_URL).connect() as conn:
            conn.exec_driver_sql("select 1")
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("FTOPS_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small base model (60 pre-training steps on 200k characters), built once a session and shared read-only
    by the tests that need a model, not a good one (the end-to-end tests that learn use ``base_model``)."""
    from ftops.training.basemodel import build_base_model

    return build_base_model(tmp_path_factory.mktemp("models") / "tiny", pretrain_steps=60, max_corpus_chars=200_000)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: on two cores shared with other work, torch's second thread
    spin-waits (measured 8x slower per step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A real MLflow SQLite store per test module (creating its schema takes seconds, so not per test)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("FTOPS_ARTIFACT_ROOT", (tmp / "artifacts").as_uri())
        yield
