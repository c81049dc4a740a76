"""ftops_canary's step against a real MLflow store and a real warehouse holding router-style logs.

Time is injected (``now=``): calls are logged at fixed times after the canary's deployment, and each review
looks at the window that ends at its ``now``.
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import mlflow
import pytest
import sqlalchemy as sa
from fakes import fresh_warehouse

from ftops.core.config import FtopsConfig
from ftops.core.stats import percentile
from ftops.deployment import rollout
from ftops.pipeline.canary import review_canary
from ftops.pipeline.common import served_model_version
from ftops.pipeline.rollback import rollback
from ftops.registry import models as registry
from ftops.serving.router import Router
from ftops.warehouse import state
from ftops.warehouse.schema import ensure_schema, insert_interactions, log_tables
from tests.serving_support import aliases, version_tags

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one store per module; tests use their own task types

T0 = datetime(2026, 11, 1, 8, tzinfo=UTC)  # every canary here is deployed at T0
H = timedelta(hours=1)
# ramp 10 → 50 → 100 %, 8 h per step, significance 0.05; samples of tens of calls, so effects that large can show
CFG = FtopsConfig.model_validate({"canary": {"min_requests": 20, "min_effect": 0.1, "min_rating_drop": 0.5}})


@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_schema(engine)
    return engine


def _version(task_type: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.log_text("x", "adapter/x.txt")
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/adapter", {})


def _deploy(task_type: str) -> tuple[str, str]:
    """A champion and a canary deployed at T0; returns their versions."""
    champion, canary = _version(task_type), _version(task_type)
    assert rollout.deploy(task_type, champion, CFG.canary.traffic_percent) == "champion"
    assert rollout.deploy(task_type, canary, CFG.canary.traffic_percent) == "canary"
    registry.set_tags(task_type, canary, {"deployed_at": T0.isoformat()})
    return champion, canary


def _log(
    engine,
    task_type: str,
    version: str,
    n: int,
    start: datetime,
    end: datetime,
    *,
    errors: int = 0,
    ratings: Sequence[int | None] = (),
    latency_ms: int = 200,
) -> None:
    """``n`` calls spread over ``[start, end)``: the first ``errors`` fail, the first ``len(ratings)`` are rated."""
    step = (end - start) / n
    tag = uuid.uuid4().hex[:8]
    insert_interactions(engine, [
        {"id": f"{task_type}-{version}-{tag}-{i}", "timestamp": start + i * step, "task_type": task_type,
         "prompt": "p", "response": "r", "model_version": served_model_version(task_type, version),
         "success": i >= errors, "user_feedback": ratings[i] if i < len(ratings) else None, "latency_ms": latency_ms}
        for i in range(n)
    ])  # fmt: skip


def test_holds_below_the_minimum_sample_whatever_the_calls_show(engine) -> None:
    champion, canary = _deploy("few")
    _log(engine, "few", champion, 200, T0, T0 + 30 * H)
    _log(engine, "few", canary, 10, T0, T0 + 30 * H, errors=10)  # every call failed, but only 10 of 20 needed
    result = review_canary(engine, CFG, "few", now=T0 + 30 * H)
    assert result["action"] == "hold" and "10 canary calls so far, 20 needed" in result["reason"]
    assert aliases("few") == (champion, canary, None)
    assert version_tags("few", canary)["traffic_percent"] == "10"


def test_hard_limit_breach_rolls_back_at_once_and_leaves_the_champion(engine) -> None:
    champion, canary = _deploy("bad")
    _log(engine, "bad", champion, 100, T0, T0 + 2 * H)
    _log(engine, "bad", canary, 100, T0, T0 + 2 * H, errors=20)
    result = review_canary(engine, CFG, "bad", now=T0 + 2 * H)  # 2 h into an 8 h step: no waiting
    assert result["action"] == "rollback" and result["applied"]
    assert "error rate 0.200 ≥ 0.05 over 100 calls" in result["reason"]
    assert aliases("bad") == (champion, None, None)
    tags = version_tags("bad", canary)
    assert tags["deployment"] == "rolled_back" and tags["traffic_percent"] == "0"
    assert "error rate 0.200" in tags["rollback_reason"]

    slow_champion, slow = _deploy("slow")
    _log(engine, "slow", slow_champion, 100, T0, T0 + H)
    _log(engine, "slow", slow, 100, T0, T0 + H, latency_ms=2500)
    result = review_canary(engine, CFG, "slow", now=T0 + H)
    assert result["action"] == "rollback" and "p95 latency 2500 ms > 400 ms" in result["reason"]
    assert "the champion's 200 ms over 100 calls" in result["reason"]
    assert aliases("slow") == (slow_champion, None, None)


def test_significantly_worse_canary_is_rolled_back_with_the_reason_tagged(engine) -> None:
    # No errors and fast on both sides: only what users said differs. Task success 0.5 vs 0.9 on 60 calls each.
    champion, canary = _deploy("worse")
    _log(engine, "worse", champion, 60, T0, T0 + 3 * H, ratings=[5] * 54 + [2] * 6)
    _log(engine, "worse", canary, 60, T0, T0 + 3 * H, ratings=[5] * 30 + [2] * 30)
    result = review_canary(engine, CFG, "worse", now=T0 + 3 * H)
    assert result["action"] == "rollback" and result["applied"]
    assert "task_success_rate 0.500 vs champion 0.900: significantly worse" in result["reason"]
    comps = {c["metric"]: c for c in result["comparisons"]}
    assert set(comps) == {"error_rate", "task_success_rate", "mean_rating"}
    assert comps["task_success_rate"]["worse"] and comps["task_success_rate"]["p_value"] < 1e-5
    assert comps["mean_rating"]["worse"] and not comps["error_rate"]["worse"]
    assert comps["error_rate"]["alpha"] == pytest.approx(0.05 / 3)  # Bonferroni over the three comparisons
    assert result["canary_metrics"]["mean_rating"] == pytest.approx(3.5)
    assert "task_success_rate 0.500" in version_tags("worse", canary)["rollback_reason"]
    assert aliases("worse") == (champion, None, None)


def test_a_small_difference_on_a_small_sample_holds_and_says_how_many_calls(engine) -> None:
    champion, canary = _deploy("close")
    _log(engine, "close", champion, 60, T0, T0 + 8 * H, ratings=[5] * 54 + [2] * 6)  # task success 0.90
    _log(engine, "close", canary, 60, T0, T0 + 8 * H, ratings=[5] * 51 + [2] * 9)  # task success 0.85
    result = review_canary(engine, CFG, "close", now=T0 + 8 * H)
    # not significantly worse (p > 0.1), but not shown "not worse" either: it was ramped before issue 19
    assert result["action"] == "hold" and "not yet shown not worse" in result["reason"], result["reason"]
    assert not any(c["worse"] for c in result["comparisons"])
    success = next(c for c in result["comparisons"] if c["metric"] == "task_success_rate")
    assert success["harm"] == pytest.approx(0.05) and success["p_value"] > 0.1 and success["upper"] > 0.1
    assert f"about {success['needed']} canary calls needed at these values (60 so far)" in result["reason"]
    assert version_tags("close", canary)["traffic_percent"] == "10"


def test_ramps_10_50_100_then_promotes_after_the_duration(engine) -> None:
    champion, canary = _deploy("ramp")
    router = Router(ttl_s=0)
    assert router.routing("ramp").canary_percent == 10
    # step 1 (10 %): 8 h
    _log(engine, "ramp", champion, 180, T0, T0 + 8 * H)
    _log(engine, "ramp", canary, 40, T0, T0 + 8 * H)
    young = review_canary(engine, CFG, "ramp", now=T0 + 4 * H)  # 20 canary calls: the bound is still too wide
    assert young["action"] == "hold" and "not yet shown not worse" in young["reason"]
    young = review_canary(engine, CFG, "ramp", now=T0 + 7 * H)  # 35 calls: shown not worse, the step is young
    assert young["action"] == "hold" and "step 1/3 at 10 % for 7.0 h of 8.0 h" in young["reason"], young["reason"]
    first = review_canary(engine, CFG, "ramp", now=T0 + 8 * H)
    assert first["action"] == "ramp" and first["applied"] and first["traffic_percent"] == 50
    tags = version_tags("ramp", canary)
    assert (tags["traffic_percent"], tags["ramp_step"]) == ("50", "1")
    assert tags["ramp_started_at"] == (T0 + 8 * H).isoformat()
    assert router.routing("ramp").canary_percent == 50  # the gateway's next alias read serves 50 %
    again = review_canary(engine, CFG, "ramp", now=T0 + 8 * H)  # a rerun at the same time: the step just began
    assert again["action"] == "hold" and "step 2/3 at 50 % has 0 calls" in again["reason"]
    assert version_tags("ramp", canary)["traffic_percent"] == "50"
    # step 2 (50 %): the step's own window counts, not the calls of step 1
    _log(engine, "ramp", champion, 50, T0 + 8 * H, T0 + 16 * H)
    _log(engine, "ramp", canary, 10, T0 + 8 * H, T0 + 16 * H)
    assert "has 10 calls, 20 needed" in review_canary(engine, CFG, "ramp", now=T0 + 16 * H)["reason"]
    _log(engine, "ramp", canary, 40, T0 + 8 * H, T0 + 16 * H)
    second = review_canary(engine, CFG, "ramp", now=T0 + 16 * H)
    assert second["action"] == "ramp" and second["traffic_percent"] == 100
    assert second["step_metrics"]["requests"] == 50 and second["canary_metrics"]["requests"] == 90
    assert router.routing("ramp").canary_percent == 100
    # step 3 (100 %): the champion serves nothing new and is compared on its calls from the earlier steps
    _log(engine, "ramp", canary, 100, T0 + 16 * H, T0 + 24 * H)
    assert review_canary(engine, CFG, "ramp", now=T0 + 23 * H)["action"] == "hold"
    done = review_canary(engine, CFG, "ramp", now=T0 + 24 * H)
    assert done["action"] == "promote" and done["applied"], done["reason"]
    assert aliases("ramp") == (canary, None, champion)
    tags = version_tags("ramp", canary)
    assert tags["deployment"] == "champion" and "step 3/3" in tags["promote_reason"]
    assert version_tags("ramp", champion)["deployment"] == "previous"
    # idempotent: the same review again changes nothing, and so does a second promotion of the same version
    assert review_canary(engine, CFG, "ramp", now=T0 + 24 * H) == {"task_type": "ramp", "action": "none",
                                                                     "reason": "no canary"}  # fmt: skip
    assert rollout.promote_canary("ramp", canary) == canary
    assert aliases("ramp") == (canary, None, champion)
    assert router.routing("ramp").canary is None


def test_at_100_percent_a_slow_step_is_not_compared_with_the_champions_earlier_calls(engine) -> None:
    # The champion serves nothing in the last step: a step 4.5× slower than the champion's earlier calls (a busy
    # hour, or CI) is not a relative breach; only the spans both served are compared.
    for task_type, step_ms, expected in (("late", 900, "promote"), ("lateslow", 2500, "hold")):
        champion, canary = _deploy(task_type)
        registry.set_tags(task_type, canary, {"ramp_step": 2, "traffic_percent": 100,
                                              "ramp_started_at": (T0 + 16 * H).isoformat()})  # fmt: skip
        _log(engine, task_type, champion, 200, T0, T0 + 16 * H)
        _log(engine, task_type, canary, 60, T0, T0 + 16 * H)
        _log(engine, task_type, canary, 40, T0 + 16 * H, T0 + 24 * H, latency_ms=step_ms)
        result = review_canary(engine, CFG, task_type, now=T0 + 24 * H)
        assert result["action"] == expected, result["reason"]
        assert result["canary_metrics"]["latency_p95_ms"] == step_ms  # the window alone would say "slower"
        assert result["champion_step_metrics"]["requests"] == 0
    assert "nothing to tell the service from the canary" in result["reason"]


def test_a_one_step_config_promotes_after_the_duration_as_before_ramps(engine) -> None:
    champion, canary = _deploy("good")
    _log(engine, "good", champion, 100, T0, T0 + 30 * H)
    _log(engine, "good", canary, 100, T0, T0 + 30 * H)
    small = {"min_requests": 20, "min_effect": 0.1}
    one_step = FtopsConfig.model_validate({"canary": {"traffic_percent": 10, "duration_hours": 48, **small}})
    assert one_step.canary.ramp_percent == (10,)
    assert review_canary(engine, one_step, "good", now=T0 + 30 * H)["action"] == "hold"
    old = FtopsConfig.model_validate({"canary": {"traffic_percent": 10, **small}})
    result = review_canary(engine, old, "good", now=T0 + 30 * H)
    assert result["action"] == "promote"
    assert aliases("good") == (canary, None, champion)
    assert rollback("good", None) == {"task_type": "good", "from_version": canary, "to_version": champion}


def test_a_review_that_judged_one_version_never_retires_the_next(engine, monkeypatch) -> None:
    champion, v_judged = _deploy("overlap")
    v_next = _version("overlap")
    _log(engine, "overlap", champion, 100, T0, T0 + 2 * H)
    _log(engine, "overlap", v_judged, 100, T0, T0 + 2 * H, errors=50)
    real = state.live_metrics

    def meanwhile(*args, **kwargs):
        # While this review reads the logs, another run (ftops_finetune) deploys the next canary.
        if registry.alias_version("overlap", registry.CANARY).version == int(v_judged):
            assert rollout.deploy("overlap", v_next, 10) == "canary"
        return real(*args, **kwargs)

    monkeypatch.setattr(state, "live_metrics", meanwhile)
    result = review_canary(engine, CFG, "overlap", now=T0 + 2 * H)
    assert result["version"] == v_judged and result["action"] == "rollback" and not result["applied"]
    assert aliases("overlap") == (champion, v_next, None)
    assert "rollback_reason" not in version_tags("overlap", v_next)
    assert version_tags("overlap", v_next)["traffic_percent"] == "10"
    # the same guards on the direct moves
    assert rollout.retire_canary("overlap", "stale verdict", version=v_judged) is None
    assert rollout.promote_canary("overlap", v_judged) is None
    assert rollout.ramp_canary("overlap", v_judged, step=1, traffic_percent=50, started_at=T0.isoformat(),
                               reason="stale") is False  # fmt: skip
    assert aliases("overlap") == (champion, v_next, None)
    assert version_tags("overlap", v_next)["traffic_percent"] == "10"
    # retiring the version that is canary works, and repeating it is a no-op
    assert rollout.retire_canary("overlap", "bad", version=v_next) == v_next
    assert rollout.retire_canary("overlap", "bad", version=v_next) == v_next
    assert aliases("overlap") == (champion, None, None)


def test_a_promotion_interrupted_after_the_champion_moved_is_finished(engine) -> None:
    champion, canary = _deploy("crash")
    registry.client().set_registered_model_alias(registry.model_name("crash"), registry.CHAMPION, canary)
    result = review_canary(engine, CFG, "crash", now=T0 + H)
    assert result["action"] == "promote" and result["applied"]
    assert aliases("crash")[:2] == (canary, None)


def test_a_canary_without_deployed_at_starts_its_window_at_the_first_review(engine) -> None:
    champion, canary = _version("untagged"), _version("untagged")
    rollout.deploy("untagged", champion, 10)
    rollout.deploy("untagged", canary, 10)
    registry.set_tags("untagged", canary, {"deployed_at": "not a time"})
    _log(engine, "untagged", canary, 50, T0, T0 + H)
    result = review_canary(engine, CFG, "untagged", now=T0 + 2 * H)
    assert result["action"] == "hold" and result["canary_metrics"]["requests"] == 0
    assert version_tags("untagged", canary)["deployed_at"] == (T0 + 2 * H).isoformat()


# -- the warehouse side: what users saw, aggregated in SQL --------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_warehouse(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield from fresh_warehouse(request.param, tmp_path, url)


def test_live_metrics_counts_ratings_and_task_success_in_the_window(any_warehouse) -> None:
    latencies = [(i * 37) % 500 + 100 for i in range(40)]
    ratings = [5, 4, 3, 2, 1, None, 7, 0] * 5  # 7 and 0 are not ratings: unrated
    rows = [
        {"id": f"m{i}", "timestamp": T0 + i * timedelta(minutes=1), "task_type": "m", "prompt": "p",
         "response": "r", "model_version": "ftops-m/2", "success": i % 10 != 0 if i != 3 else None,
         "user_feedback": ratings[i], "latency_ms": latencies[i]}
        for i in range(40)
    ]  # fmt: skip
    insert_interactions(any_warehouse, rows)
    m = state.live_metrics(any_warehouse, "m", "ftops-m/2", T0, until=T0 + 30 * timedelta(minutes=1))
    window = rows[:30]
    assert m["requests"] == 30
    assert m["errors"] == 4 and m["error_rate"] == pytest.approx(4 / 30)  # i = 0, 10, 20 and the null (3)
    assert m["latency_p95_ms"] == pytest.approx(percentile([r["latency_ms"] for r in window], 0.95))
    rated = [r["user_feedback"] for r in window if r["user_feedback"] in (1, 2, 3, 4, 5)]
    assert m["rated"] == len(rated) == 20 and m["rating_counts"] == [4, 4, 4, 4, 4]
    assert m["mean_rating"] == pytest.approx(3.0)
    expected = sum(1 for r in window if r["success"] and (r["user_feedback"] not in (1, 2, 3, 4, 5)
                                                          or r["user_feedback"] >= 4))  # fmt: skip
    assert m["task_successes"] == expected and m["task_success_rate"] == pytest.approx(expected / 30)
    strict = state.live_metrics(any_warehouse, "m", "ftops-m/2", T0, until=T0 + 30 * timedelta(minutes=1),
                                success_min_rating=5)  # fmt: skip
    assert strict["task_successes"] < expected
    empty = state.live_metrics(any_warehouse, "m", "ftops-m/9", T0)
    assert empty["requests"] == 0 and empty["mean_rating"] is None and empty["latency_p95_ms"] == 0.0


def test_the_clients_verdict_decides_task_success_and_never_the_error_rate(any_warehouse) -> None:
    # (success, task_success, rating): the verdict wins over the rating; a failed call stays an error
    calls = [(True, False, 5), (True, True, 1), (True, None, 4), (True, None, 2), (False, True, 5), (True, None, None)]
    insert_interactions(any_warehouse, [
        {"id": f"v{i}", "timestamp": T0 + i * timedelta(seconds=1), "task_type": "v", "prompt": "p", "response": "r",
         "model_version": "ftops-v/1", "success": s, "task_success": ts, "user_feedback": r, "latency_ms": 10}
        for i, (s, ts, r) in enumerate(calls)
    ])  # fmt: skip
    m = state.live_metrics(any_warehouse, "v", "ftops-v/1", T0)
    assert (m["requests"], m["errors"]) == (6, 1)
    assert m["task_successes"] == 3  # v1 (said yes despite a 1), v2 (rated 4), v5 (no feedback)
    failures = {r["id"] for r in state.recent_failures(any_warehouse, "v", None)}
    assert failures == {"v0", "v3", "v4"}  # said no; rated 2; the failed call


def test_a_log_table_of_an_earlier_release_gains_the_new_columns_in_place(any_warehouse) -> None:
    old = sa.Table("old_log", sa.MetaData(), *(c.copy() for c in log_tables("old_log")[1].c
                                                if c.name not in ("task_success", "key_id")))  # fmt: skip
    old.create(any_warehouse)
    insert_row = {"id": "o1", "timestamp": T0, "task_type": "o", "prompt": "p", "response": "r", "success": True,
                  "model_version": "ftops-o/1", "latency_ms": 5}  # fmt: skip
    with any_warehouse.begin() as conn:
        conn.execute(sa.insert(old), [insert_row])
    assert state.live_metrics(any_warehouse, "o", "ftops-o/1", T0, "old_log")["task_successes"] == 1  # read before
    ensure_schema(any_warehouse, "old_log")
    ensure_schema(any_warehouse, "old_log")  # idempotent
    columns = {c["name"] for c in sa.inspect(any_warehouse).get_columns("old_log")}
    assert {"task_success", "key_id"} <= columns
    _, t, _, _ = log_tables("old_log")
    with any_warehouse.begin() as conn:
        conn.execute(sa.update(t).where(t.c.id == "o1").values(task_success=False))
        assert conn.execute(sa.select(t.c.success, t.c.task_success)).all() == [(True, False)]
    assert state.live_metrics(any_warehouse, "o", "ftops-o/1", T0, "old_log")["task_successes"] == 0
