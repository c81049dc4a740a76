"""The production half end to end: simulated users call the gateway, their calls and ratings land in the
warehouse with the serving version, and ``ftops_canary``'s review ramps and promotes a good canary, rolls back
a degraded one, and holds one with too few calls.

The versions are API-trained: fine-tuned through the OpenAI API of the local stand-in server (``FakeOpenAI``,
whose fine-tuned models answer their training prompts with their training answers), so a good version answers
the users' prompts right and a degraded one (trained on wrong answers) answers them wrong, without training a
model here. The gateway forwards to them with the real ``openai`` client; everything else is real: MLflow's
registry and aliases, uvicorn, the spool, the SQLite warehouse, the router and the canary judge.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from ftops_dev.traffic import TrafficReport, make_calls, simulate_traffic

from ftops.core.config import FtopsConfig, ServingConfig
from ftops.deployment import rollout
from ftops.pipeline.canary import review_canary
from ftops.registry import models as registry
from ftops.serving.gateway import build_gateway
from ftops.warehouse.schema import log_tables
from tests.fake_openai import FakeOpenAI
from tests.serving_support import GatewayServer, register_api_version

pytestmark = pytest.mark.usefixtures("mlflow_store")
ROUND_CALLS, ROUNDS = 40, 60  # traffic in rounds; each round's prompts are known to the fine-tuned models
WRONG = "Sentiment: unclear. The review describes nothing I can classify, sorry about that."


def _fine_tune(client: openai.OpenAI, answers: dict[str, str]) -> str:
    """A model fine-tuned on ``prompt -> answer`` through the stand-in API; returns its id."""
    lines = [json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]})
             for p, a in answers.items()]  # fmt: skip
    upload = client.files.create(file=("train.jsonl", "\n".join(lines).encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=upload.id)
    while job.status not in ("succeeded", "failed", "cancelled"):
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and job.fine_tuned_model
    return job.fine_tuned_model


def _round_seed(task_type: str, i: int) -> int:
    return sum(map(ord, task_type)) * 1000 + i


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, mlflow_store: None) -> Any:
    tmp = tmp_path_factory.mktemp("loop")
    with FakeOpenAI() as fake, pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_HOME", str(tmp / "home"))
        # The routing hash is keyed by the installation's secret (random per FTOPS_HOME): a fixed one keeps which
        # seeded users meet the canary, and so every verdict below, the same from run to run.
        mp.setenv("FTOPS_USER_KEY_SECRET", "serving-loop-test")
        api = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
        known: dict[str, str] = {}
        for task_type in ("loopgood", "loopbad", "loopfew"):
            for i in range(ROUNDS):
                known |= {p: ref for _, _, p, ref in make_calls(ROUND_CALLS, _round_seed(task_type, i), [task_type])}
        models = {"good": _fine_tune(api, known), "good2": _fine_tune(api, known),
                  "bad": _fine_tune(api, dict.fromkeys(known, WRONG))}  # fmt: skip
        engine = sa.create_engine(f"sqlite:///{tmp / 'warehouse.db'}")
        gateway = build_gateway(
            ServingConfig(flush_every_s=0.2, alias_ttl_s=0.5), engine, spool_dir=str(tmp / "spool"),
            api_client=lambda: openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0),
        )  # fmt: skip
        cfg = FtopsConfig.model_validate({"canary": {
            "ramp_percent": [20, 50, 100], "duration_hours": 24 / 3600,  # 24 s: 8 s per step
            "min_requests": 10, "min_rated": 10,
            # Two equally good versions differ by chance on every review; effects this large need a real
            # difference (the degraded canary is 2 stars and ~40 points of task success worse). A ramp needs
            # the upper bound of each harm under them: at 0.15 that takes ~30-60 canary calls when the two
            # are alike (at 0.1 a chance 5-point gap in task success held step 1 for 220 calls in one run).
            "min_rating_drop": 0.5, "min_effect": 0.15,
        }})  # fmt: skip
        with GatewayServer(gateway) as server:
            yield {"server": server, "gateway": gateway, "engine": engine, "models": models, "cfg": cfg}


def _deploy(task_type: str, champion_model: str, canary_model: str) -> tuple[str, str]:
    champion = register_api_version(task_type, champion_model, f"{task_type}-champion")
    canary = register_api_version(task_type, canary_model, f"{task_type}-canary")
    assert rollout.deploy(task_type, champion, 20) == "champion"
    assert rollout.deploy(task_type, canary, 20) == "canary"
    return champion, canary


def _traffic(loop: dict[str, Any], task_type: str, i: int, calls: int = ROUND_CALLS) -> TrafficReport:
    report = simulate_traffic(loop["server"].base_url, requests=calls, concurrency=8, seed=_round_seed(task_type, i),
                              task_types=[task_type])  # fmt: skip
    loop["gateway"].logger.flush()
    return report


def _review_until(loop: dict[str, Any], task_type: str, final: str, timeout_s: float = 240) -> list[dict[str, Any]]:
    """Traffic rounds, each followed by a review, until the review's action is ``final``."""
    verdicts: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    for i in range(ROUNDS):
        report = _traffic(loop, task_type, i)
        verdict = review_canary(loop["engine"], loop["cfg"], task_type)
        shares = {k: v.requests for k, v in report.versions.items()}
        print(f"round {i}: {shares} -> {verdict['action']} ({verdict.get('traffic_percent')}%): {verdict['reason']}")
        verdicts.append(verdict)
        if verdict["action"] in (final, "promote", "rollback", "none") or time.monotonic() > deadline:  # decided
            break
        time.sleep(1)
    return verdicts


def _versions_logged(engine: sa.Engine, task_type: str) -> dict[str, int]:
    _, t, _, _ = log_tables("interactions")
    with engine.connect() as conn:
        query = sa.select(t.c.model_version, sa.func.count()).where(t.c.task_type == task_type).group_by(t.c.model_version)
        return {str(v): int(n) for v, n in conn.execute(query)}


def test_a_good_canary_is_ramped_then_promoted(loop: dict[str, Any]) -> None:
    champion, canary = _deploy("loopgood", loop["models"]["good"], loop["models"]["good2"])
    verdicts = _review_until(loop, "loopgood", "promote")
    actions = [v["action"] for v in verdicts]
    assert actions[-1] == "promote" and "rollback" not in actions, actions
    ramps = [v["traffic_percent"] for v in verdicts if v["action"] == "ramp"]
    assert ramps == [50, 100], actions
    assert str(registry.alias_version("loopgood", registry.CHAMPION).version) == canary
    assert str(registry.alias_version("loopgood", registry.PREVIOUS).version) == champion
    assert registry.alias_version("loopgood", registry.CANARY) is None
    logged = _versions_logged(loop["engine"], "loopgood")
    assert logged.get(f"ftops-loopgood/{champion}", 0) > 0 and logged.get(f"ftops-loopgood/{canary}", 0) > 0
    # After promotion every user meets the new champion (once the router's alias cache has expired).
    time.sleep(1)
    report = _traffic(loop, "loopgood", ROUNDS - 1, calls=20)
    assert set(report.versions) == {f"ftops-loopgood/{canary}"}
    assert report.versions[f"ftops-loopgood/{canary}"].correct == 20
    print("\n".join(report.lines()))


def test_a_canary_that_answers_wrong_is_rolled_back(loop: dict[str, Any]) -> None:
    champion, canary = _deploy("loopbad", loop["models"]["good"], loop["models"]["bad"])
    verdicts = _review_until(loop, "loopbad", "rollback")
    assert verdicts[-1]["action"] == "rollback", [v["action"] for v in verdicts]
    assert all(v["action"] == "hold" for v in verdicts[:-1])  # never ramped on the way
    assert registry.alias_version("loopbad", registry.CANARY) is None
    assert str(registry.alias_version("loopbad", registry.CHAMPION).version) == champion
    tags = registry.client().get_model_version("ftops-loopbad", canary).tags
    assert tags["deployment"] == "rolled_back" and tags["rollback_reason"] == verdicts[-1]["reason"]
    metrics = verdicts[-1]["canary_metrics"]
    assert metrics["mean_rating"] < verdicts[-1]["champion_metrics"]["mean_rating"] - 1
    # The rolled-back version gets no more traffic.
    time.sleep(1)  # past the router's alias cache
    # the first request after the ttl is answered on the old aliases while one background read refreshes them
    loop["gateway"].router.routing("loopbad")
    loop["gateway"].router.settle()
    report = _traffic(loop, "loopbad", ROUNDS - 1, calls=20)
    assert set(report.versions) == {f"ftops-loopbad/{champion}"}


def test_a_canary_with_too_few_calls_holds(loop: dict[str, Any]) -> None:
    champion, canary = _deploy("loopfew", loop["models"]["good"], loop["models"]["good2"])
    _traffic(loop, "loopfew", 0, calls=8)
    cfg = loop["cfg"].model_copy(update={"canary": loop["cfg"].canary.model_copy(update={"duration_hours": 1 / 3600})})
    time.sleep(1.5)  # older than the whole (1 s) duration: only the sample size holds it
    verdict = review_canary(loop["engine"], cfg, "loopfew")
    assert verdict["action"] == "hold", verdict
    assert "10" in verdict["reason"]  # names the sample it needs
    assert str(registry.alias_version("loopfew", registry.CANARY).version) == canary
    assert str(registry.alias_version("loopfew", registry.CHAMPION).version) == champion
