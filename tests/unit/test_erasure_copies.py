"""The copies ``ftops erase`` reaches beyond the tables and the latest dataset versions, each through its real
store: keyed user keys (and the earlier unsalted ones), the user id from standard input, the gateway's spool
written by a real ``InteractionLogger``, evaluation outputs in a real MLflow store, Data Docs files, quoted
prompts in recorded decisions, ``--purge`` with DVC garbage collection, and the fine-tune refusing a version
that an erasure superseded."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import mlflow
import pytest
import sqlalchemy as sa
from fakes import erasure_config
from ftops_dev.simulate import generate_interactions

from ftops.core import userkey
from ftops.curation.rules import user_key
from ftops.datasets.versions import DatasetNotFoundError
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.erase import PURGED_TAG, erase_user
from ftops.pipeline.erase_copies import REDACTED_TAG
from ftops.registry import models as registry
from ftops.serving.interaction_log import InteractionLogger
from ftops.warehouse import erasure
from ftops.warehouse.schema import curation_tables, ensure_schema, insert_interactions
from ftops.warehouse.state import read_decisions, record_decision

pytestmark = pytest.mark.usefixtures("mlflow_store")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FTOPS_HOME (and so a fresh user-key secret) for the test."""
    monkeypatch.setenv("FTOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(userkey.SECRET_ENV, raising=False)
    monkeypatch.delenv(userkey.SECRET_FILE_ENV, raising=False)
    userkey._cache.clear()
    return tmp_path / "home"


def _rows(n: int, user: str, marker: str, seed: int = 3) -> list[dict[str, Any]]:
    rows = generate_interactions(n, seed=seed, task_types=("sentiment",))
    return [{**r, "user_id": user, "prompt": f"{marker} {i} {r['prompt']}"} for i, r in enumerate(rows)]


def test_user_keys_are_keyed_by_a_private_secret_and_old_keys_still_match(home: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:  # fmt: skip
    key = user_key("alice@example.com")
    assert key is not None and len(key) == len("user-") + 32 and key == user_key("alice@example.com")
    secret = home / "user_key.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text().strip()) == 64
    # no longer the unsalted hash anyone can recompute from a guessed id
    assert key != userkey.legacy_user_key("alice@example.com")
    assert userkey.legacy_user_key("alice@example.com") == "user-ff8d9819fc0e"  # sha256 prefix of earlier releases
    monkeypatch.setenv(userkey.SECRET_ENV, "another-installation")
    assert user_key("alice@example.com") != key  # another secret, another key
    monkeypatch.delenv(userkey.SECRET_ENV)
    moved = tmp_path / "copied.secret"
    moved.write_text(secret.read_text())
    monkeypatch.setenv(userkey.SECRET_FILE_ENV, str(moved))
    assert user_key("alice@example.com") == key  # the same secret moved to another machine: the same key

    # marks and pool rows made under the legacy key are found and erased
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    rows = _rows(12, "alice@example.com", "legacy-marker")
    ensure_schema(engine)
    insert_interactions(engine, rows)
    legacy = userkey.legacy_user_key("alice@example.com")
    erasure.mark_erased(engine, "interactions", [rows[0]["id"]], user_key=legacy, request_key="old")
    _, pool, _, _ = curation_tables("interactions")
    with engine.begin() as conn:
        conn.execute(sa.insert(pool), [{"row_id": "elsewhere-1", "task_type": "sentiment", "prompt": "p",
                                        "response": "r", "user_key": legacy, "run_key": "old"}])  # fmt: skip
    summary = erase_user(engine, erasure_config(tmp_path), "alice@example.com")
    # the log row marked under the legacy key is not marked again; the legacy pool row's id is marked now
    assert summary["user_key"] == key and summary["rows_marked"] == (len(rows) - 1) + 1
    assert summary["pool_rows_deleted"] == 1
    assert erasure.marked_rows(engine, "interactions", [key]) == {r["id"] for r in rows[1:]} | {"elsewhere-1"}


def test_the_cli_reads_the_user_id_from_stdin_never_the_command_line(home: Path, tmp_path: Path, monkeypatch,
                                                                     capsys) -> None:  # fmt: skip
    from ftops.cli import main

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    insert_interactions(engine, _rows(5, "bob\tsecret id", "stdin-marker"))
    monkeypatch.setattr("sys.stdin", io.StringIO("bob\tsecret id\n"))
    assert main(["erase", "--user-id-file", "-", "--warehouse-url", str(engine.url)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows_marked"] == 5 and "bob" not in out + err
    id_file = tmp_path / "id.txt"
    id_file.write_text("two\nlines\n")
    assert main(["erase", "--user-id-file", str(id_file), "--warehouse-url", str(engine.url)]) == 2
    assert "exactly one non-empty line" in capsys.readouterr().err
    assert main(["erase", "--user-id", "bob\tsecret id", "--warehouse-url", str(engine.url)]) == 0
    assert "deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of the two is required
        main(["erase", "--warehouse-url", str(engine.url)])


def test_spooled_rows_are_marked_and_leave_the_spool_and_the_rejected_file(home: Path, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    insert_interactions(engine, _rows(4, "carol", "logged-marker"))
    spool = home / "spool" / "interactions"
    down = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'w.db'}")  # flushes fail: rows stay spooled
    theirs, others = _rows(6, "carol", "spooled-marker", seed=5), _rows(3, "dave", "kept-marker", seed=6)
    logger = InteractionLogger(down, "interactions", spool, flush_every_s=3600)
    ids = [logger.log(**{k: v for k, v in r.items() if k != "id"}) for r in theirs[:3] + others]
    logger.flush()  # its warehouse is unreachable: the rows stay spooled
    assert logger.spooled() == 6
    rejected = spool / "rejected.jsonl"
    rejected.write_text("".join(json.dumps({"rejected_at": "2026-12-06T00:00:00+00:00", "segment": "s", "reason": "x",
                                            "row": r}, default=str) + "\n" for r in [theirs[5], others[0]]))  # fmt: skip

    # a gateway holds the spool: the rows are marked, the files stay
    held = erase_user(engine, erasure_config(tmp_path), "carol")
    assert held["spool"]["spool_in_use"] and held["spool"]["spooled_rows"] == 4
    assert erasure.erased_ids(engine, "interactions", ids) == set(ids[:3])
    assert b"spooled-marker 5" not in rejected.read_bytes() and b"kept-marker 0" in rejected.read_bytes()
    assert b"spooled-marker" in b"".join(p.read_bytes() for p in spool.glob("*.jsonl"))

    # the gateway has stopped (its last flush failed: the rows are still spooled): the files lose the rows
    logger.close()
    freed = erase_user(engine, erasure_config(tmp_path), "carol")
    assert not freed["spool"]["spool_in_use"] and freed["spool"]["removed"] == 3
    spooled = b"".join(p.read_bytes() for p in spool.glob("*.jsonl"))
    assert b"spooled-marker" not in spooled and spooled.count(b"kept-marker") == 4  # 3 spooled, 1 rejected
    assert not erase_user(engine, erasure_config(tmp_path), "carol")["changed"]


def test_outputs_data_docs_decisions_and_purge(home: Path, tmp_path: Path) -> None:
    from fakes import HashEmbedder

    from ftops.pipeline.curate import curate_window, publish_window, published_examples

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    cfg = erasure_config(tmp_path)
    task_type = f"sentiment_{tmp_path.name[-6:].replace('-', '_')}"
    rows = [{**r, "task_type": task_type} for r in generate_interactions(240, seed=7, task_types=("sentiment",))]
    mine = [{**r, "task_type": task_type} for r in _rows(12, "erin", "erin-marker-prompt", seed=8)]
    for r in mine:
        r["timestamp"] = rows[0]["timestamp"]
    ensure_schema(engine)
    insert_interactions(engine, rows + mine)
    now = max(r["timestamp"] for r in rows + mine)
    curate_window(engine, cfg, task_type, run_key="n1", now=now, embedder=HashEmbedder())
    publish_window(engine, cfg, task_type, run_key="n1")
    datasets = dataset_registry(cfg)
    v1 = datasets.latest(task_type)
    test_prompts = [m["content"] for r in datasets.read(v1, "test") for m in r["messages"] if m["role"] == "user"]
    assert any("erin-marker-prompt" in p for p in test_prompts)
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tag("dataset_version", v1.tag)
        mlflow.log_text("".join(json.dumps({"prompt": p, "candidate": "x"}) + "\n" for p in test_prompts),
                        "evaluation/outputs.jsonl")  # fmt: skip
        mlflow.log_text("weights", "adapter/README.txt")
    model = registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/adapter",
                              {"dataset_version": v1.tag})  # fmt: skip
    published_examples(cfg, task_type)  # the leakage guard's history: v1's prompts cached under FTOPS_HOME
    assert b"erin-marker-prompt" in (home / "cache" / "published" / task_type / f"{v1.content_hash}.json").read_bytes()
    docs = home / "data_docs" / "planted"  # beside the site curation just built
    docs.mkdir(parents=True)
    (docs / "quoting.html").write_text(f"<td>{mine[0]['prompt']}</td>")
    (docs / "clean.html").write_text("<td>counts only</td>")
    record_decision(engine, {"decision_key": "old-pattern", "decided_at": now, "task_type": task_type, "train": True,
                             "reason": f"recurring error pattern: 12 similar failures (e.g. {mine[1]['prompt'][:80]!r})",
                             "dataset_version": v1.tag, "details": {"examples": [mine[1]["prompt"]]},
                             "kind": "training", "policy": "error_pattern", "run_id": None})  # fmt: skip

    summary = erase_user(engine, cfg, "erin", purge=True)

    assert summary["runs_redacted"] == [run.info.run_id]
    outputs = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/outputs.jsonl")
    assert "erin-marker-prompt" not in outputs and outputs.count("\n") == sum("erin" not in p for p in test_prompts)
    assert registry.client().get_run(run.info.run_id).data.tags[REDACTED_TAG] == summary["request_key"]
    assert "planted/quoting.html" in summary["data_docs_removed"] and (docs / "clean.html").exists()
    site = b"".join(p.read_bytes() for p in (home / "data_docs").rglob("*") if p.is_file())
    assert b"erin-marker-prompt" not in site and len(site) > 1000
    assert summary["decisions_redacted"] == 1
    old = next(d for d in read_decisions(engine) if d["decision_key"] == "old-pattern")
    assert "erin-marker" not in json.dumps(old, default=str)
    # --purge: v1 is gone from the registry and the DVC cache and remote; the model says so
    assert summary["purged_versions"] == [v1.tag] and [v.tag for v in datasets.versions(task_type)] != [v1.tag]
    assert v1.tag not in {v.tag for v in datasets.versions(task_type)}
    stored = b"".join(p.read_bytes() for base in (tmp_path / "remote", tmp_path / "datasets" / ".dvc" / "cache")
                      for p in base.rglob("*") if p.is_file())  # fmt: skip
    assert b"erin-marker-prompt" not in stored and b"sentiment" in stored  # the successor's content stays
    assert not (home / "cache" / "published" / task_type / f"{v1.content_hash}.json").exists()
    tags = {str(mv.version): mv.tags for mv in registry.versions(task_type)}[model]
    assert tags[PURGED_TAG].startswith(f"{v1.tag} purged by")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):  # purged: a fine-tune cannot name it
        datasets.get(task_type, v1.tag)
    assert not erase_user(engine, cfg, "erin", purge=True)["changed"]



def test_a_fine_tune_refuses_a_version_that_an_erasure_superseded(home: Path, tmp_path: Path) -> None:
    from ftops.pipeline.finetune import ErasedDatasetError, refuse_pre_erasure

    datasets = dataset_registry(erasure_config(tmp_path))
    example = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    v1 = datasets.publish("refused", [example] * 3, [example], {"source": "test"})
    refuse_pre_erasure(datasets, v1)  # no erasure yet: fine
    v2 = datasets.publish("refused", [example] * 2, [example], {"parent": v1.tag,
                          "erasure": {"user_key": "user-x", "request_key": "ticket-7"}})  # fmt: skip
    with pytest.raises(ErasedDatasetError, match=f"{v1.tag} predates the erasure successor {v2.tag}.*ticket-7"):
        refuse_pre_erasure(datasets, v1)
    refuse_pre_erasure(datasets, v2)


def test_the_training_files_uploaded_for_jobs_on_affected_versions_are_deleted(home: Path) -> None:
    from fake_openai import FakeOpenAI

    from ftops.core.config import OpenAIBackend
    from ftops.core.openai_api import make_client
    from ftops.pipeline.erase_copies import FILES_DELETED_TAG, delete_api_files
    from ftops.training.openai_jobs import submit_job

    backend = OpenAIBackend(n_epochs=1, batch_size=2, learning_rate_multiplier=0.5)
    chat = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{2 * i}."}]} for i in range(12)]  # fmt: skip
    with FakeOpenAI(api_key="sk-test") as fake, make_client("sk-test", fake.base_url, max_retries=0) as client:
        job_id = submit_job(client, train_rows=chat, validation_rows=chat, idempotency_key="erase/1",
                            backend=backend, retry_delay_s=0.01)  # fmt: skip
        uploaded = [fake.job(job_id)["training_file"], fake.job(job_id)["validation_file"]]
        experiment = registry.experiment_id("api_erasure")
        run = registry.client().create_run(experiment)
        out = delete_api_files({run.info.run_id: job_id}, lambda: make_client("sk-test", fake.base_url))
        assert out == {"deleted": uploaded, "pending": []} and sorted(fake.deleted_files) == sorted(uploaded)
        assert not set(uploaded) & set(fake.files)
        assert registry.client().get_run(run.info.run_id).data.tags[FILES_DELETED_TAG] == "true"
        # deleted before (a re-run after a crash): a 404 is done, not an error
        assert delete_api_files({run.info.run_id: job_id}, lambda: make_client("sk-test", fake.base_url))["deleted"]
    assert delete_api_files({"r": "ftjob-1"}, None) == {"deleted": [], "pending": ["ftjob-1"]}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_erasure_waits_for_the_versioning_lock_that_publishing_holds(backend: str, home: Path, tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:  # fmt: skip
    import threading

    from ftops.warehouse.locks import VersioningLockTimeout, versioning_lock

    url = f"sqlite:///{tmp_path / 'w.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    with versioning_lock(engine, what="a publish"):  # held as publish_window holds it
        with pytest.raises(VersioningLockTimeout, match="holds the versioning lock"):
            with versioning_lock(sa.create_engine(url), wait_s=1, what="ftops erase"):
                pass
    if backend == "postgres":
        return  # the rest writes the shared database's public tables
    ensure_schema(engine)
    insert_interactions(engine, _rows(3, "gina", "lock-marker"))
    done: dict[str, Any] = {}
    with versioning_lock(engine, what="a publish"):
        worker = threading.Thread(target=lambda: done.update(erase_user(engine, erasure_config(tmp_path), "gina")))
        worker.start()
        worker.join(timeout=2)
        assert worker.is_alive() and not done  # waiting for the publish to finish
    worker.join(timeout=60)
    assert done["rows_marked"] == 3
