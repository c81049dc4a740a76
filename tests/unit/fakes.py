"""Small test doubles and row builders shared by the curation tests."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ftops.core.config import CurationConfig, FtopsConfig, StorageConfig

GOOD = "Sentiment: positive. The review describes a satisfying experience with the product."


class HashEmbedder:
    """Unrelated texts get near-orthogonal vectors; identical normalised texts get identical ones."""

    name = "hash-test"
    dim = 64

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for t in texts:
            seed = int(hashlib.sha256(t.lower().strip().encode()).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        self.embedded += len(rows)
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def row(i: int, **overrides) -> dict:
    """A good log row; ``overrides`` replace fields."""
    base = {"id": f"r{i}", "task_type": "sentiment", "prompt": f"Classify review number {i}: great value",
            "response": GOOD, "user_feedback": 5, "success": True, "latency_ms": 300, "confidence": 0.9,
            "timestamp": pd.Timestamp("2026-11-01", tz="UTC"), "user_id": f"u{i}", "model_version": "base",
            "tokens_used": 40, "metadata": None, "task_success": None}  # fmt: skip
    return base | overrides


def erasure_config(tmp_path: Path) -> FtopsConfig:
    """A small curation (10 examples suffice) with its dataset registry, remote and embedding cache in ``tmp_path``."""
    return FtopsConfig(
        curation=CurationConfig(min_examples=10, target_size=500, test_split=0.2),
        storage=StorageConfig(dataset_repo=str(tmp_path / "datasets"), dvc_remote=str(tmp_path / "remote"),
                              embedding_cache=str(tmp_path / "emb.db")),
    )  # fmt: skip


def fresh_warehouse(kind: str, tmp_path: Path, postgres_url: str | None = None) -> Iterator[sa.Engine]:
    """A fresh warehouse with FT-Ops' schema, for a parametrised fixture to yield from: an SQLite file
    (``kind="sqlite"``), or a schema of its own on the local PostgreSQL server, dropped afterwards."""
    from ftops.warehouse.schema import ensure_schema

    if kind == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
        ensure_schema(engine)
        yield engine
        engine.dispose()
        return
    assert postgres_url is not None
    schema = f"ftops_test_{uuid.uuid4().hex[:10]}"
    with sa.create_engine(postgres_url).begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
    # in the URL, not connect_args: the Arrow (ADBC) log reader opens its own connection from the URL
    engine = sa.create_engine(sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"}))
    ensure_schema(engine)
    yield engine
    engine.dispose()
    with sa.create_engine(postgres_url).begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")
