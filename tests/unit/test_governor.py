"""The governor: every policy and guard firing and not firing, on their own and through ``govern`` on a real
warehouse, DVC registry and MLflow registry; the error-pattern search on real MiniLM embeddings.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa

from ftops.core.config import FtopsConfig, GovernorConfig, apply_overrides, load_config
from ftops.governance import policy as p

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
GOV = GovernorConfig()


# -- policies and guards on their own ---------------------------------------------------------------------------
def test_new_data_counts_examples_against_the_champions_version() -> None:
    fired = p.new_data_policy(120, "dataset/t/v1", untrained=True, latest="dataset/t/v2", cfg=GOV)
    assert fired.fired and "120 examples that dataset/t/v1 lacks" in fired.reason
    few = p.new_data_policy(99, "dataset/t/v1", untrained=True, latest="dataset/t/v2", cfg=GOV)
    assert not few.fired and "fewer than 100" in few.reason and few.inputs["new_examples"] == 99
    trained = p.new_data_policy(500, "dataset/t/v1", untrained=False, latest="dataset/t/v2", cfg=GOV)
    assert not trained.fired and "already trained" in trained.reason


def test_error_pattern_needs_a_cluster_and_something_new() -> None:
    pattern = [{"size": 12, "mean_similarity": 0.9, "examples": ["convert 300 F to kelvin"], "row_ids": []}]
    kw = {"untrained": True, "latest": "dataset/t/v2", "cfg": GOV}
    assert p.error_pattern_policy(40, pattern, NOW, new_examples=3, **kw).fired
    reason = p.error_pattern_policy(40, pattern, NOW, new_examples=3, **kw).reason
    assert "12 similar failures" in reason and "kelvin" not in reason  # counts and cluster ids, never a prompt
    assert not p.error_pattern_policy(40, [], NOW, new_examples=3, **kw).fired
    stale = p.error_pattern_policy(40, pattern, NOW, new_examples=0, **kw)
    assert not stale.fired and "nothing new" in stale.reason


def test_plateau_fires_only_when_success_stalled_with_enough_calls_and_new_data() -> None:
    def m(rate: float, n: int = 200) -> dict:
        return {"requests": n, "task_success_rate": rate}

    kw = {"untrained": True, "latest": "dataset/t/v2", "cfg": GOV}
    assert p.plateau_policy(m(0.80), m(0.80), new_examples=5, **kw).fired
    assert p.plateau_policy(m(0.805), m(0.80), new_examples=5, **kw).fired  # +0.005 < 0.01: no improvement
    assert not p.plateau_policy(m(0.85), m(0.80), new_examples=5, **kw).fired  # improving
    assert not p.plateau_policy(m(0.80), m(0.80, n=10), new_examples=5, **kw).fired  # too little history
    assert not p.plateau_policy(m(0.80), m(0.80), new_examples=0, **kw).fired  # nothing new to learn
    assert not p.plateau_policy(None, None, new_examples=5, **kw).fired  # no champion


def test_guards() -> None:
    assert p.in_flight_guard(["governor__t__v2__new_data"], "dataset/t/v2").fired
    assert not p.in_flight_guard([], "dataset/t/v2").fired
    assert not p.attempts_guard(["a", "b"], "dataset/t/v2", GOV).fired  # 2 failures < 3: retried
    gave_up = p.attempts_guard(["a", "b", "c"], "dataset/t/v2", GOV)
    assert gave_up.fired and "failed 3 times" in gave_up.reason
    assert p.canary_guard("v3").fired and not p.canary_guard(None).fired
    assert p.cooldown_guard(NOW - timedelta(hours=3), NOW, GOV).fired
    assert not p.cooldown_guard(NOW - timedelta(hours=25), NOW, GOV).fired
    assert not p.cooldown_guard(None, NOW, GOV).fired
    assert p.budget_guard(90.0, 15.0, GOV).fired and not p.budget_guard(80.0, 15.0, GOV).fired
    assert not p.budget_guard(1e9, None, GOV).fired  # a local fine-tune costs no API money


def test_decide_takes_the_first_policy_that_fired_unless_a_guard_stops_it() -> None:
    yes = p.Check("new_data", True, "120 new")
    pattern = p.Check("error_pattern", True, "12 similar failures")
    cool = p.Check("cooldown", True, "cooling down")
    decision = p.decide("t", "dataset/t/v2", [pattern, yes], [p.Check("canary", False, "none")])
    assert decision.train and decision.policy == "error_pattern" and decision.reason == "12 similar failures"
    stopped = p.decide("t", "dataset/t/v2", [yes], [cool])
    assert not stopped.train and stopped.policy == "new_data" and "cooling down" in stopped.reason
    erasure = p.decide("t", "dataset/t/v3", [p.Check("erasure", True, "retrain")], [cool])
    assert erasure.train  # a retrain without erased data does not wait for the cooldown
    idle = p.decide("t", "dataset/t/v2", [p.Check("new_data", False, "12 new")], [])
    assert not idle.train and idle.policy is None and "new_data: 12 new" in idle.reason
    assert set(idle.details) == {"policies", "guards"}


# -- the error-pattern search on real embeddings ---------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder():
    from ftops.curation.embedding import SentenceEmbedder

    return SentenceEmbedder(load_config().curation.embedding_model)


def planted_failures(n: int = 12, seed: int = 0) -> list[str]:
    """One question asked again and again in slightly different words: a recurring failure."""
    rng = random.Random(seed)
    asks = ["Convert {} degrees Fahrenheit to Kelvin.", "Please convert {} degrees Fahrenheit to Kelvin.",
            "Convert {} °F to Kelvin, please.", "How many Kelvin is {} degrees Fahrenheit?"]  # fmt: skip
    return [rng.choice(asks).format(rng.randint(10, 500)) for _ in range(n)]


def scattered_failures(n: int = 60) -> list[str]:
    """Failures of the simulator's city extraction and sentiment traffic: many topics, no pattern."""
    from ftops_dev.simulate import generate_interactions

    rows = generate_interactions(1200, seed=3, task_types=["city_extraction", "sentiment"])
    bad = [r["prompt"] for r in rows if r["success"] is False or (r["user_feedback"] or 5) <= 2]
    return bad[:n]


def test_error_patterns_find_a_planted_cluster_and_ignore_scattered_failures(embedder) -> None:
    from ftops.governance.patterns import find_clusters

    scattered = scattered_failures()
    assert len(scattered) == 60
    assert find_clusters(embedder.embed(scattered), similarity=GOV.error_pattern_similarity, min_size=10) == []
    planted = planted_failures()
    clusters = find_clusters(embedder.embed(scattered + planted), similarity=GOV.error_pattern_similarity,
                             min_size=10)  # fmt: skip
    assert len(clusters) == 1
    members = set(clusters[0].members)
    assert len(members & set(range(60, 72))) >= 10 and len(members - set(range(60, 72))) <= 1
    fewer = find_clusters(embedder.embed(scattered + planted[:8]), similarity=GOV.error_pattern_similarity,
                          min_size=10)  # fmt: skip
    assert fewer == []  # 8 alike are below error_pattern_min


# -- govern() on a real warehouse, DVC registry and MLflow registry ---------------------------------------------
TASK = "sentiment"


@pytest.fixture
def state(tmp_path: Path, monkeypatch, mlflow_store):
    """FTOPS_HOME of this test: an SQLite warehouse with simulated logs, and a dataset registry."""
    from ftops_dev.simulate import generate_interactions

    from ftops.pipeline.common import dataset_registry
    from ftops.registry import models as registry
    from ftops.warehouse.schema import ensure_schema, insert_interactions

    monkeypatch.setenv("FTOPS_HOME", str(tmp_path))
    client = registry.client()  # the MLflow store is the module's: start each test without models
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    ensure_schema(engine)
    rows = generate_interactions(300, seed=11, task_types=[TASK, "city_extraction"])
    for r in rows:
        r["timestamp"] = NOW - timedelta(hours=1)
    insert_interactions(engine, rows)
    cfg = apply_overrides(load_config(), {"task_types": [TASK, "city_extraction"]})
    return engine, cfg, dataset_registry(cfg)


def publish(datasets, task_type: str, start: int, n: int):
    examples = [{"messages": [{"role": "user", "content": f"{task_type} review number {i}: fine."},
                              {"role": "assistant", "content": "positive"}]} for i in range(start, start + n)]  # fmt: skip
    return datasets.publish(task_type, examples[: n * 4 // 5], examples[n * 4 // 5 :], {"lineage": {}})


def register(task_type: str, dataset_tag: str, alias: str | None = None) -> str:
    from ftops.registry import models as registry

    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tags({"task_type": task_type})
    version = registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/model",
                                {"dataset_version": dataset_tag})  # fmt: skip
    if alias:
        registry.client().set_registered_model_alias(registry.model_name(task_type), alias, version)
    return version


class NoEmbedding:
    """Fails the test if the error-pattern policy embeds when it should not need to."""

    def embed(self, texts):  # noqa: ANN001, ANN201
        raise AssertionError("embedded")


def govern(engine, cfg: FtopsConfig, run_key: str, embedder=None, **kw):  # noqa: ANN001, ANN201
    from ftops.pipeline.governor import govern as run

    return {d["task_type"]: d for d in run(engine, cfg, [TASK], run_key=run_key, now=NOW, embedder=embedder, **kw)}


def quiet(cfg: FtopsConfig, **extra) -> FtopsConfig:  # noqa: ANN003
    """Only the policies a test is about."""
    return apply_overrides(cfg, {"governor.policies": ["new_data"], **extra})


def test_new_data_trains_once_and_a_retried_task_decides_the_same(state) -> None:
    from ftops.warehouse.state import read_decisions

    engine, cfg, datasets = state
    publish(datasets, TASK, 0, 150)
    first = govern(engine, quiet(cfg), "run1")[TASK]
    assert first["train"] and first["policy"] == "new_data" and "150 examples (no champion yet)" in first["reason"]
    assert first["finetune_run_id"] == f"governor__{TASK}__v1__new_data"
    again = govern(engine, quiet(cfg), "run1")[TASK]  # the same governor task, retried
    assert again["finetune_run_id"] == first["finetune_run_id"] and again["train"]
    rows = read_decisions(engine, TASK)
    assert len(rows) == 1 and rows[0]["run_id"] == first["finetune_run_id"] and rows[0]["policy"] == "new_data"
    assert rows[0]["details"]["policies"]["new_data"]["inputs"]["new_examples"] == 150
    # a second governor run while that fine-tune has not ended: waits, and says why
    later = govern(engine, quiet(cfg, **{"governor.cooldown_hours": 0}), "run2")[TASK]
    assert not later["train"] and "has not finished yet" in later["reason"]


def test_new_data_counts_only_examples_the_champion_lacks(state) -> None:
    engine, cfg, datasets = state
    v1 = publish(datasets, TASK, 0, 150)
    register(TASK, v1.tag, "champion")
    publish(datasets, TASK, 50, 150)  # 50 new, 100 the champion was trained on
    few = govern(engine, quiet(cfg), "run1")[TASK]
    assert not few["train"], few["reason"]
    assert "50 examples that dataset/sentiment/v1 lacks, fewer than 100" in few["reason"]
    lower = govern(engine, quiet(cfg, **{"governor.min_new_examples": 50}), "run2")[TASK]
    assert lower["train"] and lower["dataset_version"] == "dataset/sentiment/v2"


def test_guards_stop_training_and_say_why(state) -> None:
    from ftops.warehouse.state import record_decision, record_training_outcome

    engine, cfg, datasets = state
    v1 = publish(datasets, TASK, 0, 150)
    canary_of = register(TASK, "dataset/sentiment/v0", "champion")
    register(TASK, "dataset/sentiment/v0", "canary")
    held = govern(engine, quiet(cfg), "run1")[TASK]
    assert not held["train"] and held["policy"] == "new_data" and "canary v2 is still being judged" in held["reason"]
    from ftops.registry import models as registry

    registry.client().delete_registered_model_alias(registry.model_name(TASK), "canary")
    assert canary_of == "1"
    # cooldown: a training decision 2 hours ago
    record_decision(engine, {"decision_key": "old/sentiment", "decided_at": NOW - timedelta(hours=2), "task_type": TASK,
                             "train": True, "reason": "x", "dataset_version": "dataset/sentiment/v0",
                             "run_id": "governor__sentiment__v0__new_data"})  # fmt: skip
    record_training_outcome(engine, "governor__sentiment__v0__new_data", TASK, dataset_version="dataset/sentiment/v0",
                            status="succeeded")  # fmt: skip
    cool = govern(engine, quiet(cfg), "run2")[TASK]
    assert not cool["train"] and "cooling down until" in cool["reason"]
    # three failed fine-tunes of v1: given up on, and reported
    cfg0 = quiet(cfg, **{"governor.cooldown_hours": 0})
    for attempt in range(3):
        run_id = "governor__sentiment__v1__new_data" + (f"__retry{attempt}" if attempt else "")
        retry = govern(engine, cfg0, f"try{attempt}")[TASK]
        assert retry["train"] and retry["finetune_run_id"] == run_id
        record_training_outcome(engine, run_id, TASK, dataset_version=v1.tag, status="failed")
    gave_up = govern(engine, cfg0, "try3")[TASK]
    assert not gave_up["train"] and "failed 3 times" in gave_up["reason"]


def test_the_daily_api_budget_holds_back_api_fine_tunes(state) -> None:
    engine, cfg, datasets = state
    publish(datasets, TASK, 0, 150)
    api = {"training.backend": {"kind": "openai", "base_model": "gpt-4o-mini-2024-07-18"}}
    tight = govern(engine, quiet(cfg, **api, **{"governor.daily_api_budget_usd": 0.0}), "run1")[TASK]
    assert not tight["train"] and "daily API budget" in tight["reason"] and tight["details"]["estimated_usd"] > 0
    ample = govern(engine, quiet(cfg, **api), "run2")[TASK]
    assert ample["train"] and ample["details"]["guards"]["budget"]["inputs"]["estimated_usd"] > 0


def test_force_needs_a_reason_and_still_meets_the_guards(state) -> None:
    engine, cfg, datasets = state
    v1 = publish(datasets, TASK, 0, 150)
    register(TASK, v1.tag, "champion")
    with pytest.raises(ValueError, match="force needs a reason"):
        govern(engine, quiet(cfg), "run1", force=True)
    forced = govern(engine, quiet(cfg), "run1", force=True, reason="new labelling guide")[TASK]
    assert forced["train"] and forced["policy"] == "force" and "new labelling guide" in forced["reason"]
    register(TASK, v1.tag, "canary")
    refused = govern(engine, quiet(cfg), "run2", force=True, reason="again")[TASK]
    assert not refused["train"] and "canary" in refused["reason"]


def test_unknown_task_type_is_a_clear_error(state) -> None:
    from ftops.pipeline.governor import govern as run

    engine, cfg, _ = state
    with pytest.raises(LookupError, match="unknown task type"):
        run(engine, cfg, ["no_such_task"], run_key="r")


def plant_failures(engine, prompts: list[str], when: datetime) -> None:  # noqa: ANN001
    from ftops.warehouse.schema import insert_interactions

    insert_interactions(engine, [{"id": f"fail-{i}", "timestamp": when, "task_type": TASK, "prompt": prompt,
                                  "response": "I cannot help.", "user_feedback": 1, "success": True,
                                  "latency_ms": 100} for i, prompt in enumerate(prompts)])  # fmt: skip


def test_error_pattern_policy_end_to_end(state, embedder) -> None:
    engine, cfg, datasets = state
    v1 = publish(datasets, TASK, 0, 150)
    register(TASK, v1.tag, "champion")
    publish(datasets, TASK, 20, 150)  # 20 new examples: too few for new_data
    only = apply_overrides(cfg, {"governor.policies": ["error_pattern", "new_data"]})
    # the simulator's own failures (its 1-2 ratings) are scattered: no pattern
    scattered = govern(engine, only, "run1", embedder)[TASK]
    assert not scattered["train"], scattered["reason"]
    inputs = scattered["details"]["policies"]["error_pattern"]["inputs"]
    assert inputs["failures"] >= 10 and inputs["patterns"] == []
    plant_failures(engine, planted_failures(), NOW - timedelta(minutes=30))
    found = govern(engine, only, "run2", embedder)[TASK]
    assert found["train"] and found["policy"] == "error_pattern", found["reason"]
    pattern = found["details"]["policies"]["error_pattern"]["inputs"]["patterns"][0]
    assert pattern["size"] >= 10 and all("Fahrenheit" in e or "°F" in e for e in pattern["examples"])
    assert pattern["cluster"] in found["reason"] and pattern["cluster"].startswith("pattern-")
    assert not any(e[:20] in found["reason"] for e in pattern["examples"]), found["reason"]


def test_plateau_policy_end_to_end(state) -> None:
    from ftops.warehouse.schema import insert_interactions

    engine, cfg, datasets = state
    v1 = publish(datasets, TASK, 0, 150)
    version = register(TASK, v1.tag, "champion")
    publish(datasets, TASK, 10, 150)  # 10 new examples
    served = f"ftops-{TASK}/{version}"
    rows = []
    for window, start in (("earlier", NOW - timedelta(days=50)), ("recent", NOW - timedelta(days=20))):
        for i in range(100):
            rows.append({"id": f"{window}-{i}", "timestamp": start + timedelta(minutes=i), "task_type": TASK,
                         "prompt": "p", "response": "r", "model_version": served, "success": i % 10 != 0,
                         "latency_ms": 50})  # fmt: skip
    insert_interactions(engine, rows)
    only = apply_overrides(cfg, {"governor.policies": ["plateau"]})
    flat = govern(engine, only, "run1")[TASK]
    assert flat["train"] and flat["policy"] == "plateau" and "0.900 → 0.900" in flat["reason"]
    with engine.begin() as conn:  # the recent window got better: no plateau
        conn.execute(sa.text("update interactions set success = true where id like 'recent-%'"))
    better = govern(engine, only, "run2")[TASK]
    assert not better["train"] and "still improving" in better["reason"]


def test_a_failing_policy_is_recorded_and_blocks_no_other_task_type(state) -> None:
    from ftops.pipeline.governor import govern as run
    from ftops.warehouse.state import read_decisions

    engine, cfg, datasets = state
    publish(datasets, TASK, 0, 150)
    publish(datasets, "city_extraction", 0, 150)

    class Broken:
        def embed(self, texts):  # noqa: ANN001, ANN201
            raise RuntimeError("embedding service down")

    both = apply_overrides(cfg, {"governor.policies": ["error_pattern", "new_data"]})
    out = {d["task_type"]: d for d in run(engine, both, [], run_key="r", now=NOW, embedder=Broken())}
    assert set(out) == {TASK, "city_extraction"}
    for decision in out.values():
        # the error-pattern policy failed (recorded), new_data still decided
        error = decision["details"]["policies"]["error_pattern"]
        assert not error["fired"] and "embedding service down" in error["reason"]
        assert decision["train"] and decision["policy"] == "new_data"
    assert {d["task_type"] for d in read_decisions(engine)} == {TASK, "city_extraction"}


def test_training_guards_for_a_persons_request(state) -> None:
    from ftops.pipeline.governor import training_guards

    engine, cfg, datasets = state
    publish(datasets, TASK, 0, 150)
    assert training_guards(engine, cfg, TASK, now=NOW).allowed
    register(TASK, "dataset/sentiment/v1", "canary")
    verdict = training_guards(engine, cfg, TASK, now=NOW)
    assert not verdict.allowed and verdict.reason.startswith("canary v1 is still being judged")
    with pytest.raises(LookupError):
        training_guards(engine, cfg, "no_such_task")
