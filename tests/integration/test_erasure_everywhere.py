"""Must show 7: erasure reaches every copy FT-Ops made of a user's prompts (and, since issue 21, of their
corrections, the teacher's answers to their prompts and the preference pairs made of them).

curate → fine-tune (a tiny real model, evaluated, registered, deployed) → 20 calls from user U through the
gateway (the first 10 flushed to the warehouse, the last 10 still spooled) → ``ftops erase --purge
--user-id-file -`` in a subprocess with U's id on standard input, while the gateway still runs. Then a byte
search of every file under ``FTOPS_HOME`` (datasets, DVC cache and remote, spool, Data Docs, checkpoints,
MLflow's database, served-model cache), the MLflow artifact root and ``AIRFLOW_HOME/logs`` finds none of U's
prompts (each a unique marker; loose git objects are inflated first). The same search before the erasure
finds them, so it can fail. A fine-tune on the pre-erasure version is refused, and a repeat is a no-op.

Lean by design (under 3 minutes on 2 cores): the stages are the library calls the DAG tasks make, in this
process, with their log lines written to ``AIRFLOW_HOME/logs`` as a task's would be; the warehouse (the
application's own log, which FT-Ops never alters) lies outside the searched folders.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
TASK = "city_extraction"
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _search(roots: list[Path], needles: list[str]) -> dict[str, list[str]]:
    """Which files under ``roots`` hold which needles (loose git objects inflated; other files as bytes)."""
    found: dict[str, list[str]] = {}
    encoded = [(n, n.encode()) for n in needles]
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            data = path.read_bytes()
            if ".git/objects/" in str(path) and len(path.parent.name) == 2:
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    pass
            hits = [n for n, b in encoded if b in data]
            if hits:
                found[str(path.relative_to(root.parent))] = hits
    return found


@pytest.fixture
def installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_base: Path) -> dict:
    from ftops.core import userkey
    from ftops.core.config import FtopsConfig

    home, artifacts, airflow = tmp_path / "home", tmp_path / "artifacts", tmp_path / "airflow"
    env = {"FTOPS_HOME": str(home), "AIRFLOW_HOME": str(airflow), "FTOPS_ARTIFACT_ROOT": artifacts.as_uri(),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "FTOPS_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'warehouse.db'}",  # the application's log: not searched
           "FTOPS_CONFIG": str(tmp_path / "ftops.yaml")}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(userkey.SECRET_ENV, raising=False)
    userkey._cache.clear()
    base = tiny_base
    cfg = FtopsConfig.model_validate({
        "curation": {"min_examples": 20, "min_response_chars": 1, "target_size": 300, "test_split": 0.25},
        "training": {"backend": {"kind": "huggingface", "base_model": str(base), "epochs": 1, "batch_size": 8,
                                 "validation_share": 0.0}, "min_train_examples": 10},
        "gate": {"min_test_examples": 5, "min_accuracy": 0.0, "min_accuracy_gain": -1.0, "bootstrap_resamples": 100,
                 "min_lower_bound_gain": -1.0},
        "serving": {"flush_every_s": 3600},  # the gateway flushes only when told: rows stay spooled
        "teacher": {"enabled": True, "model": "standin-teacher"},
    })  # fmt: skip
    Path(env["FTOPS_CONFIG"]).write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    logs = airflow / "logs" / "dag_id=ftops_finetune" / "task.log"
    logs.parent.mkdir(parents=True)
    handler = logging.FileHandler(logs)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield {"cfg": cfg, "env": {**os.environ, **env}, "roots": [home, artifacts, airflow / "logs"]}
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


def test_erasure_leaves_no_copy_of_the_users_prompts(installation: dict) -> None:
    from ftops_dev.simulate import generate_interactions
    from ftops_dev.teacher_standin import TeacherStandin
    from openai import OpenAI
    from unit.fakes import HashEmbedder

    from ftops.datasets.versions import SPLITS, DatasetNotFoundError
    from ftops.pipeline import finetune as stages
    from ftops.pipeline.common import dataset_registry
    from ftops.pipeline.curate import curate_window, publish_window, published_examples
    from ftops.pipeline.erase import PURGED_TAG
    from ftops.pipeline.finetune_eval import evaluate_candidate
    from ftops.registry import models as registry
    from ftops.serving.gateway import build_gateway
    from ftops.warehouse.schema import ensure_schema, insert_interactions
    from ftops.warehouse.teacher_store import TeacherStore
    from tests.serving_support import GatewayServer

    cfg, env, roots = installation["cfg"], installation["env"], installation["roots"]
    user = f"user-{uuid.uuid4().hex[:6]}@example.com"
    token = uuid.uuid4().hex[:10]
    engine = sa.create_engine(env["FTOPS_WAREHOUSE_URL"])
    rows = generate_interactions(240, seed=7, task_types=[TASK])
    good = [r for r in rows if (r["user_feedback"] or 0) >= 4 and r["success"]][:16]
    logged = [{**r, "id": f"u-{i}", "user_id": user, "prompt": f"zqx{token}log{i:02d} {r['prompt']}"}
              for i, r in enumerate(good)]  # fmt: skip
    for i, r in enumerate(logged[:8]):  # U said some answers were wrong: corrected (pairs), or left to the teacher
        r.update(user_feedback=1, response=f"zqx{token}bad{i:02d} The city mentioned in the text is Oslo.",
                 correction=f"zqx{token}cor{i:02d} {r['response']}" if i % 2 else None)  # fmt: skip
    served = [f"zqx{token}srv{i:02d} Which city is mentioned: I live in Lyon." for i in range(20)]
    markers = [p.split()[0] for p in [r["prompt"] for r in logged] + served]
    markers += [f"zqx{token}{kind}{i:02d}" for i in range(8) for kind in ("bad", "cor") if kind == "bad" or i % 2]
    ensure_schema(engine)
    insert_interactions(engine, rows + logged)

    with TeacherStandin(accuracy=1.0) as teacher:
        client = OpenAI(base_url=teacher.base_url, api_key="standin", max_retries=0)
        curate_window(engine, cfg, TASK, run_key="night-1", now=NOW, embedder=HashEmbedder(), teacher_client=lambda: client)
    assert publish_window(engine, cfg, TASK, run_key="night-1")["status"] == "versioned"
    datasets = dataset_registry(cfg)
    before = datasets.latest(TASK)
    users_ids = [r["id"] for r in logged]
    taught = TeacherStore(engine, cfg.interactions_table).answers(TASK, users_ids)
    assert {f"u-{i}" for i in range(0, 8, 2)} <= set(taught)  # U's uncorrected failures: the teacher answered
    pairs = datasets.read_preference(before)
    assert any(p["row_id"] in users_ids for p in pairs), pairs  # U's corrected or relabelled rows made pairs
    lineage = datasets.read_metadata(before)["lineage"]
    assert {f"u-{i}" for i in range(len(logged))} & {i for s in SPLITS for i in lineage["test"]}  # U in the test
    published_examples(cfg, TASK)  # what the next curation's leakage guard caches of every version
    trained = stages.train_candidate(cfg, TASK, None, run_key="erasure-story/" + TASK)
    evaluation = evaluate_candidate(cfg, TASK, trained["run_id"])
    version = stages.register_candidate(TASK, trained["run_id"], evaluation)
    stages.deploy_candidate(cfg, TASK, version)

    gateway = build_gateway(cfg.serving, engine, cfg.interactions_table)
    with GatewayServer(gateway) as server:
        for i, prompt in enumerate(served):
            answer = httpx.post(f"{server.base_url}/chat/completions", timeout=60, json={
                "model": f"ftops/{TASK}", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                "user": user})  # fmt: skip
            assert answer.status_code == 200, answer.text
            if i == 9:
                gateway.logger.flush()  # the first 10 reach the warehouse; the last 10 stay spooled
        assert gateway.logger.spooled() == 10
        found = _search(roots, markers)
        places = " ".join(found)
        assert all(p in places for p in ("spool", "dvc-remote", "evaluation/outputs.jsonl", "cache/published")), found
        assert sum(len(v) for k, v in found.items() if "spool" in k) == 10  # the spooled calls, each once
        hits = {m for v in found.values() for m in v}
        assert any(f"{token}cor" in m for m in hits) and any(f"{token}bad" in m for m in hits), hits  # in pairs

        erase = [sys.executable, "-m", "ftops.cli", "erase", "--purge", "--user-id-file", "-"]
        first = subprocess.run(erase, input=user + "\n", env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        summary = json.loads(first.stdout)
        assert summary["spool"]["spool_in_use"] and summary["spool"]["spooled_rows"] == 10
        assert summary["purged_versions"] == [before.tag] and summary["runs_redacted"] == [trained["run_id"]]
    # the gateway has stopped: its last flush brought the spooled rows to the log, marked erased

    found = _search(roots, markers)
    assert found == {}, found
    assert TeacherStore(engine, cfg.interactions_table).answers(TASK, users_ids) == {}
    after = datasets.latest(TASK)
    assert not any(p["row_id"] in users_ids for p in datasets.read_preference(after))
    task_log = roots[2] / "dag_id=ftops_finetune" / "task.log"
    assert "test prompts" in task_log.read_text()  # the stages' log lines were searched: counts, no prompt
    assert user not in first.stdout + first.stderr and not any(m in first.stderr for m in markers)
    with pytest.raises(DatasetNotFoundError):  # a fine-tune on the pre-erasure version is refused
        stages.check_training_request(cfg, TASK, before.tag)
    tags = {str(mv.version): mv.tags for mv in registry.versions(TASK)}[version]
    assert tags[PURGED_TAG].startswith(f"{before.tag} purged")

    again = subprocess.run(erase, input=user, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["changed"] is False
