"""The FT-Ops page's data (``ftops.pipeline.dashboard``): dataset accounting, Data Docs pages, links."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftops.pipeline import dashboard


def test_a_dataset_versions_counts_are_split_by_kind_and_never_carry_its_lineage() -> None:
    meta = {"train_rows": 8, "test_rows": 2, "lineage": {"train": ["row-1"]}, "accounting": {
        "accepted": 10, "filtered:low_rating": 4, "filtered:too_short": 1, "quarantined:malformed": 2, "erased": 1}}
    out = dashboard._summarise_metadata(meta)
    assert out["counts"] == {"accepted": 10, "filtered": {"low_rating": 4, "too_short": 1},
                             "quarantined": {"malformed": 2}, "other": {"erased": 1}}  # fmt: skip
    assert "lineage" not in out and out["train_rows"] == 8
    assert dashboard._summarise_metadata({"train_rows": 1})["counts"] is None  # not recorded, not "0"


def test_data_docs_links_stay_inside_the_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTOPS_HOME", str(tmp_path))
    site = tmp_path / "data_docs"
    own = {"pages": ["validations/curated_x/run/b.html", "../escape.html", "/etc/passwd"]}
    assert dashboard._docs_pages(own) == ["validations/curated_x/run/b.html"]
    older = {"docs_path": str(site / "index.html")}  # published before reports named their pages
    assert dashboard._docs_pages(older) == ["index.html"]
    assert dashboard._docs_pages({"docs_path": "/elsewhere/data_docs/index.html"}) == []


def test_links_point_at_the_airflow_and_mlflow_pages() -> None:
    links = dashboard._Links("/airflow", "http://mlflow:5000")
    assert links.run("ftops_finetune", "manual__2026-11-30T07:00:00+00:00") == (
        "/airflow/dags/ftops_finetune/runs/manual__2026-11-30T07%3A00%3A00%2B00%3A00")
    assert links.mlflow_run("abc", "sentiment", experiment="7") == "http://mlflow:5000/#/experiments/7/runs/abc"
    assert links.mlflow_run(None, "sentiment") is None


def test_the_mlflow_ui_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTOPS_MLFLOW_UI_URL", raising=False)
    assert dashboard.mlflow_ui_url() == "http://127.0.0.1:5000"
    monkeypatch.setenv("FTOPS_MLFLOW_UI_URL", "https://mlflow.example.com/")
    assert dashboard.mlflow_ui_url() == "https://mlflow.example.com"
