import pytest


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A real MLflow SQLite store per test module (creating its schema takes seconds, so not per test)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("FTOPS_ARTIFACT_ROOT", (tmp / "artifacts").as_uri())
        yield
