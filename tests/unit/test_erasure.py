"""``ftops erase`` end to end on a real warehouse (SQLite and PostgreSQL), a real git + DVC dataset registry and
a real MLflow store: simulated logs are curated and versioned, a model is registered on them, one user is
erased; then no latest version holds the user's prompts (read back through ``dvc.api``), the models trained on
them are tagged, their teacher answers are deleted, nothing records the raw id, a second run changes nothing, and
re-curating never re-admits the user's rows."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pytest
import sqlalchemy as sa
from fakes import HashEmbedder, erasure_config, row
from ftops_dev.simulate import generate_interactions

from ftops.core.config import FtopsConfig
from ftops.curation.rules import split_of, user_key
from ftops.curation.scrub import scrub
from ftops.datasets.versions import SPLITS
from ftops.pipeline.common import dataset_registry
from ftops.pipeline.curate import curate_window, publish_window
from ftops.pipeline.erase import PENDING_TAG, erase_user
from ftops.registry import models as registry
from ftops.warehouse import erasure
from ftops.warehouse.logread import read_log_window
from ftops.warehouse.schema import (
    curation_tables,
    ensure_schema,
    ensure_state_tables,
    insert_interactions,
    log_tables,
)
from ftops.warehouse.state import read_decisions, read_staged, write_quarantine
from ftops.warehouse.teacher_store import TeacherStore

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one MLflow store per module: task types differ per test
NOW = datetime(2026, 11, 1, tzinfo=UTC)  # the simulator's rows lie in the 30 days before


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path: Path):
    if request.param == "sqlite":
        yield sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"ftops_erase_{uuid.uuid4().hex[:10]}"
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
    # in the URL, not connect_args: the Arrow (ADBC) reader opens its own connection from the URL
    eng = sa.create_engine(sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}))
    yield eng
    eng.dispose()
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


def _simulate(engine: sa.Engine, suffix: str) -> list[dict[str, Any]]:
    """Two task types of simulated logs, named per test (the module shares one MLflow store)."""
    rows = generate_interactions(360, seed=7, task_types=("sentiment", "city_extraction"))
    rows = [{**r, "task_type": f"{r['task_type']}_{suffix}"} for r in rows]
    ensure_schema(engine)
    insert_interactions(engine, rows)
    return rows


def _curate_all(engine: sa.Engine, cfg: FtopsConfig, task_types: list[str], run_key: str, **kw: Any) -> dict:
    results = {}
    for task_type in task_types:
        curated = curate_window(engine, cfg, task_type, run_key=run_key, now=NOW, embedder=HashEmbedder(), **kw)
        results[task_type] = publish_window(engine, cfg, task_type, run_key=run_key) if curated["staged"] else curated
    return results


def _register(task_type: str, dataset_version: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.log_text("weights", "adapter/README.txt")
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/adapter",
                             {"dataset_version": dataset_version})  # fmt: skip


def _lineage_users(cfg: FtopsConfig, rows: list[dict[str, Any]]) -> Counter[str]:
    """Users behind the examples of every task type's latest version."""
    owner = {r["id"]: r["user_id"] for r in rows}
    datasets = dataset_registry(cfg)
    found: Counter[str] = Counter()
    for task_type in datasets.task_types():
        lineage = datasets.read_metadata(datasets.latest(task_type))["lineage"]
        found.update(owner[i] for s in SPLITS for i in lineage[s] if owner[i])
    return found


def _state(engine: sa.Engine, cfg: FtopsConfig, task_types: list[str]) -> dict[str, Any]:
    datasets = dataset_registry(cfg)
    return {
        "versions": {t: [v.tag for v in datasets.versions(t)] for t in task_types},
        "tags": {t: {str(mv.version): dict(mv.tags) for mv in registry.versions(t)} for t in task_types},
        "decisions": read_decisions(engine),
    }


def test_erasure_removes_a_user_everywhere_tags_models_and_runs_once(engine, tmp_path: Path, caplog) -> None:
    suffix = f"{engine.dialect.name[:2]}{uuid.uuid4().hex[:4]}"
    cfg = erasure_config(tmp_path)
    rows = _simulate(engine, suffix)
    task_types = sorted({r["task_type"] for r in rows})
    first = _curate_all(engine, cfg, task_types, "night-1")
    assert {r["status"] for r in first.values()} == {"versioned"}
    datasets = dataset_registry(cfg)
    trained = {t: datasets.latest(t).tag for t in task_types}
    models = {t: _register(t, trained[t]) for t in task_types}
    victim = _lineage_users(cfg, rows).most_common(1)[0][0]  # the user with the most examples
    key = user_key(victim)
    theirs = [r for r in rows if r["user_id"] == victim]
    their_ids = {r["id"] for r in theirs}
    # a prompt another user also sent may stay (as that user's example): only the victim's own text must go
    others = {scrub(r["prompt"]).text for r in rows if r["user_id"] != victim}
    their_prompts = {scrub(r["prompt"]).text for r in theirs} - others
    held = {t for t in task_types
            if their_ids & {i for s in SPLITS for i in datasets.read_metadata(datasets.latest(t))["lineage"][s]}}  # fmt: skip
    assert held and their_prompts & {m["content"] for t in held for s in SPLITS
                                     for r in datasets.read(datasets.latest(t), s) for m in r["messages"]}  # fmt: skip
    _, log_t, quarantine, _ = log_tables("interactions")
    _, pool, _, _ = curation_tables("interactions")
    # what curation quarantines of a user: a malformed row (its id), and a row without an id (by its user_id)
    write_quarantine(engine, "night-0", [
        {"row_id": theirs[0]["id"], "reason": "rating_out_of_range", "row": {**theirs[0], "user_feedback": 9}},
        {"row_id": "", "reason": "missing_id", "row": {**theirs[1], "id": None}},
        {"row_id": "", "reason": "missing_id", "row": {**rows[0], "id": None, "user_id": "someone-else"}},
    ], task_type=theirs[0]["task_type"])  # fmt: skip
    with engine.connect() as conn:
        quarantined = conn.scalar(sa.select(sa.func.count()).where(quarantine.c.row_id.in_(their_ids)))
        pooled = conn.scalar(sa.select(sa.func.count()).where(pool.c.user_key == key))
        idless = conn.scalar(sa.select(sa.func.count()).where(quarantine.c.row_id == ""))

    # the teacher's answers to one of their prompts and to another user's (ftops.warehouse.teacher_store)
    store = TeacherStore(engine)
    other = next(r for r in rows if r["user_id"] not in (victim, None) and r["prompt"] != theirs[0]["prompt"])
    for i, r in enumerate((theirs[0], other)):
        store.save(key=f"k{i}", task_type=r["task_type"], model="teacher", answer="an answer", prompt_tokens=1,
                   completion_tokens=1, cost=0.0, created_at=NOW, row_ids=[r["id"]])  # fmt: skip
    store.set_verdicts({"k0": ("accepted", None), "k1": ("accepted", None)})

    caplog.set_level(logging.DEBUG)
    summary = erase_user(engine, cfg, victim)
    assert summary["teacher_answers_deleted"] == 1
    assert not store.answers(theirs[0]["task_type"], [theirs[0]["id"]]) and store.lookup(["k0"]) == {}
    assert store.answers(other["task_type"], [other["id"]]) == {other["id"]: "an answer"}

    assert summary["changed"] and summary["user_key"] == key and summary["rows_marked"] == len(theirs)
    assert summary["pool_rows_deleted"] == pooled > 0 and summary["quarantine_rows_deleted"] == quarantined + 1
    assert set(summary["successor_versions"]) == held
    assert summary["tagged_model_versions"] == {t: [models[t]] for t in held}
    for t in task_types:  # every latest version, read back through dvc.api
        latest = datasets.latest(t)
        prompts = {m["content"] for s in SPLITS for r in datasets.read(latest, s) for m in r["messages"]
                   if m["role"] == "user"}  # fmt: skip
        assert not prompts & their_prompts, t
        meta = datasets.read_metadata(latest)
        assert not their_ids & {i for s in SPLITS for i in meta["lineage"][s]}
        assert [len(meta["lineage"][s]) for s in SPLITS] == [meta["train_rows"], meta["test_rows"]]
        if t in held:
            assert latest.tag == summary["successor_versions"][t] and meta["parent"] == trained[t]
            assert meta["erasure"]["user_key"] == key and sum(meta["erasure"]["removed"].values()) > 0
            assert victim not in json.dumps(meta)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).where(pool.c.user_key == key)) == 0
        assert conn.scalar(sa.select(sa.func.count()).where(pool.c.row_id.in_(their_ids))) == 0
        assert conn.scalar(sa.select(sa.func.count()).where(quarantine.c.row_id.in_(their_ids))) == 0
        assert conn.scalar(sa.select(sa.func.count()).where(quarantine.c.row_id == "")) == idless - 1  # not another's
        # the application's own log is not altered
        assert conn.scalar(sa.select(sa.func.count()).where(log_t.c.user_id == victim)) == len(theirs)
    for t in task_types:
        tags = {str(mv.version): mv.tags for mv in registry.versions(t)}[models[t]]
        assert (PENDING_TAG in tags) == (t in held) and victim not in json.dumps(tags)
    decisions = read_decisions(engine, kind="erasure")
    assert {d["task_type"] for d in decisions} == held and all(not d["train"] for d in decisions)
    assert all(key in d["reason"] and d["details"]["user_key"] == key for d in decisions)
    assert victim not in json.dumps(decisions, default=str)
    assert not [r.getMessage() for r in caplog.records if victim in r.getMessage()]

    before = _state(engine, cfg, task_types)
    again = erase_user(engine, cfg, victim)
    assert not again["changed"] and again["rows_marked"] == again["pool_rows_deleted"] == 0
    assert again["teacher_answers_deleted"] == 0
    assert again["successor_versions"] == again["tagged_model_versions"] == {} and again["decisions"] == []
    assert _state(engine, cfg, task_types) == before

    # re-reading all history on purpose never re-admits the erased rows, and every row is accounted for
    later = _curate_all(engine, cfg, task_types, "rerun", since=NOW - timedelta(days=400))
    for t in task_types:
        mine = sum(r["task_type"] == t for r in theirs)
        assert later[t]["accounting"].get("filtered:erased", 0) == mine
        assert sum(later[t]["accounting"].values()) == later[t]["rows_read"] == sum(r["task_type"] == t for r in rows)
        meta = datasets.read_metadata(datasets.latest(t))
        assert not their_ids & {i for s in SPLITS for i in meta["lineage"][s]}
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).where(pool.c.row_id.in_(their_ids))) == 0
        assert conn.scalar(sa.select(sa.func.count()).where(quarantine.c.row_id.in_(their_ids))) == 0


def test_an_unknown_or_empty_user_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ftops.cli import main

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    insert_interactions(engine, generate_interactions(20, seed=1))
    with pytest.raises(LookupError, match="no row of the log table 'interactions' has this user id"):
        erase_user(engine, erasure_config(tmp_path), "nobody-42")
    with pytest.raises(ValueError, match="empty"):
        erase_user(engine, erasure_config(tmp_path), " ")
    id_file = tmp_path / "user-id.txt"
    id_file.write_text("nobody-42\n")
    assert main(["erase", "--user-id-file", str(id_file), "--warehouse-url", str(engine.url)]) == 2
    err = capsys.readouterr().err
    assert "ftops erase: no row of the log table" in err and "nobody-42" not in err
    assert erasure.marked_rows(engine, "interactions", user_key("nobody-42")) == set()


@pytest.mark.parametrize("crash_in", ["set_tags", "delete_user_rows"])
def test_a_crash_between_steps_then_a_rerun_finishes_the_job(tmp_path: Path, monkeypatch, crash_in: str) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    cfg = erasure_config(tmp_path)
    rows = _simulate(engine, f"crash{crash_in[:3]}")
    task_types = sorted({r["task_type"] for r in rows})
    _curate_all(engine, cfg, task_types, "night-1")
    datasets = dataset_registry(cfg)
    models = {t: _register(t, datasets.latest(t).tag) for t in task_types}
    victim = _lineage_users(cfg, rows).most_common(1)[0][0]
    their_ids = {r["id"] for r in rows if r["user_id"] == victim}
    held = {t for t in task_types
            if their_ids & {i for s in SPLITS for i in datasets.read_metadata(datasets.latest(t))["lineage"][s]}}  # fmt: skip
    counts = {t: len(datasets.versions(t)) for t in task_types}
    module = registry if crash_in == "set_tags" else erasure  # MLflow fails while tagging; the worker is killed

    def killed(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(module, crash_in, killed)
        with pytest.raises(ConnectionError):
            erase_user(engine, cfg, victim)
    assert read_decisions(engine) == []

    summary = erase_user(engine, cfg, victim)

    assert summary["changed"] and summary["rows_marked"] == 0  # marked before the crash
    assert {t: len(datasets.versions(t)) for t in task_types} == {t: counts[t] + (t in held) for t in task_types}
    for t in task_types:
        assert not their_ids & {i for s in SPLITS for i in datasets.read_metadata(datasets.latest(t))["lineage"][s]}
        assert (PENDING_TAG in {str(mv.version): mv.tags for mv in registry.versions(t)}[models[t]]) == (t in held)
    decisions = read_decisions(engine, kind="erasure")  # one per task type, though the first run recorded none
    assert sorted(d["task_type"] for d in decisions) == sorted(held)
    assert {d["dataset_version"] for d in decisions} == {datasets.latest(t).tag for t in held}
    assert not erase_user(engine, cfg, victim)["changed"]


def test_rows_erased_between_curating_and_publishing_are_never_published(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    cfg = erasure_config(tmp_path)
    rows = _simulate(engine, "staged")
    task_type = sorted({r["task_type"] for r in rows})[0]
    staged = curate_window(engine, cfg, task_type, run_key="night-1", now=NOW, embedder=HashEmbedder())
    assert staged["staged"]
    users = Counter(r["user_id"] for r in rows if r["task_type"] == task_type and r["user_id"])
    victim = users.most_common(1)[0][0]
    their_ids = {r["id"] for r in rows if r["user_id"] == victim}

    summary = erase_user(engine, cfg, victim)  # nothing is versioned yet: only the warehouse changes
    assert summary["successor_versions"] == {} and [d["task_type"] for d in read_decisions(engine)] == ["*"]
    # the staged rows lost the victim's examples at once, not only when publishing
    restaged = read_staged(engine, "night-1", task_type)
    assert summary["staged_rows_dropped"] > 0 and not their_ids & {c["row_id"] for c in restaged["candidates"]}
    assert not their_ids & {i for s in SPLITS for i in restaged["metadata"]["lineage"][s]}
    published = publish_window(engine, cfg, task_type, run_key="night-1")

    datasets = dataset_registry(cfg)
    meta = datasets.read_metadata(datasets.latest(task_type))
    assert published["erased_before_publishing"] > 0
    assert not their_ids & {i for s in SPLITS for i in meta["lineage"][s]}
    assert [len(meta["lineage"][s]) for s in SPLITS] == [meta["train_rows"], meta["test_rows"]]
    _, pool, _, _ = curation_tables("interactions")
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).where(pool.c.row_id.in_(their_ids))) == 0


def test_not_erased_works_with_any_table_object_of_the_log_and_integer_ids(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    insert_interactions(engine, generate_interactions(10, seed=2))
    ids = sorted(r["id"] for r in generate_interactions(10, seed=2))
    assert erasure.mark_erased(engine, "interactions", ids[:3], user_key="user-x", request_key="r") == 3
    assert erasure.mark_erased(engine, "interactions", ids[:4], user_key="user-x", request_key="r") == 1
    assert erasure.erased_ids(engine, "interactions", ids) == set(ids[:4])
    mine, other = log_tables("interactions")[1], log_tables("interactions")[1]  # two objects, one table
    with engine.connect() as conn:
        kept = set(conn.scalars(sa.select(mine.c.id).where(erasure.not_erased(other, "interactions"))))
        assert kept == set(ids[4:])
        # marks are per log table: another log table's marks leave this one's rows alone
        assert len(conn.scalars(sa.select(mine.c.id).where(erasure.not_erased(mine, "elsewhere"))).all()) == 10
    numbered = sa.Table("numbered", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    with engine.begin() as conn:
        numbered.create(conn)
        conn.execute(sa.insert(numbered), [{"id": i} for i in range(5)])
    erasure.mark_erased(engine, "numbered", ["1", "3"], user_key="user-y", request_key="r")
    with engine.connect() as conn:
        assert conn.scalars(sa.select(numbered.c.id).where(erasure.not_erased(numbered, "numbered"))).all() == [0, 2, 4]


def test_a_text_timestamp_column_counts_only_the_erased_rows_of_the_window(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    texty = sa.Table("texty", sa.MetaData(), *(sa.Column(c.name, sa.Text if c.name == "timestamp" else c.type)
                                                for c in log_tables("texty")[1].c))  # fmt: skip
    texty.create(engine)
    ensure_state_tables(engine, "texty")
    rows = [{"id": f"r{i}", "timestamp": f"2026-10-{10 + i:02d}T00:00:00+00:00", "task_type": "sentiment",
             "prompt": "p", "response": "r", "user_feedback": 5, "success": True, "latency_ms": 1}
            for i in range(6)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(texty), rows)
    erasure.mark_erased(engine, "texty", ["r0", "r3"], user_key="user-z", request_key="r")
    frame, erased = read_log_window(engine, "sentiment", table="texty", since=datetime(2026, 10, 12, tzinfo=UTC),
                                    until=datetime(2026, 10, 20, tzinfo=UTC))  # fmt: skip
    assert sorted(frame["id"]) == ["r2", "r4", "r5"] and erased == 1  # r3 in the window; r0 before it


def test_a_users_corrections_and_preference_pairs_go_and_the_others_stay(engine, tmp_path: Path) -> None:
    task_type = f"sentiment_p{engine.dialect.name[:2]}{uuid.uuid4().hex[:4]}"
    cfg = erasure_config(tmp_path)
    right = "Sentiment: negative. The reviewer regrets the purchase and asks for a refund of the order."
    train = [i for i in range(100, 400) if split_of(row(i)["prompt"], cfg.curation.test_split) == "train"]

    def corrected(i: int, user: str, at: datetime = NOW - timedelta(hours=2)) -> dict[str, Any]:
        return row(i, task_type=task_type, user_id=user, user_feedback=1, correction=f"{right} ({user} {i})",
                   response="Sentiment: positive. The reviewer loved the product and would buy it again.",
                   timestamp=at)  # fmt: skip

    ensure_schema(engine)
    insert_interactions(engine, [row(i, task_type=task_type, timestamp=NOW - timedelta(hours=3)) for i in range(40)]
                        + [corrected(i, "alice") for i in train[:2]] + [corrected(i, "bob") for i in train[2:4]])
    first = _curate_all(engine, cfg, [task_type], "night-1")[task_type]
    datasets = dataset_registry(cfg)
    pairs = datasets.read_preference(datasets.latest(task_type))
    assert first["status"] == "versioned" and sorted(p["chosen"].split("(")[1][:3] for p in pairs) == [
        "ali", "ali", "bob", "bob"]  # fmt: skip
    # a third correction of alice's is curated (staged) but not yet published when she is erased
    insert_interactions(engine, [corrected(train[4], "alice", NOW + timedelta(minutes=30))])
    staged = curate_window(engine, cfg, task_type, run_key="night-3", now=NOW + timedelta(hours=1),
                           embedder=HashEmbedder())  # fmt: skip
    assert staged["preference_pairs"] == 5 and staged["staged"]  # the pool's four and the new one

    summary = erase_user(engine, cfg, "alice")
    successor = datasets.latest(task_type)
    assert summary["successor_versions"] == {task_type: successor.tag}
    kept = datasets.read_preference(successor)
    assert sorted(p["row_id"] for p in kept) == [f"r{i}" for i in sorted(train[2:4])]
    assert "alice" not in json.dumps(kept) and all(p["source"] == "correction" for p in kept)
    meta = datasets.read_metadata(successor)
    assert meta["erasure"]["preference_removed"] == 2 and meta["preference_rows"] == 2
    assert meta["source_counts"]["train"]["correction"] == 2
    assert [len(meta["sources"][s]) for s in SPLITS] == [meta["train_rows"], meta["test_rows"]]
    # the staged run lost her pair at once; publishing it brings none of hers back
    assert [p["row_id"] for p in read_staged(engine, "night-3", task_type)["metadata"]["staged_preference"]
            if p["row_id"] == f"r{train[4]}"] == []  # fmt: skip
    publish_window(engine, cfg, task_type, run_key="night-3")
    assert "alice" not in json.dumps(datasets.read_preference(datasets.latest(task_type)))
    # her corrections went with her log rows: re-reading all history never re-admits them
    again = curate_window(engine, cfg, task_type, run_key="rerun", now=NOW + timedelta(hours=2),
                          since=NOW - timedelta(days=400), embedder=HashEmbedder())  # fmt: skip
    assert again["accounting"]["filtered:erased"] == 3 and again["accepted_sources"]["source:correction"] == 2
    publish_window(engine, cfg, task_type, run_key="rerun")
    assert "alice" not in json.dumps(datasets.read_preference(datasets.latest(task_type)))
