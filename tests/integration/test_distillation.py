"""Distillation (issue 22): an expensive upstream model is the champion, and a small local student trained on its
traffic replaces it, proven on the frozen eval set and on cost, then through the canary.

The upstream is the stand-in "large" model (:class:`ftops_dev.teacher_standin.TeacherStandin`: right on 95 % of
the simulator's prompts, 0.1 s an answer), registered with a hosted model's token prices and marked a trusted
teacher, and reached by the gateway through its connection with the real ``openai`` client. Simulated users call
it through the gateway (a share of the calls carry a system prompt and an earlier exchange), so the first logs are
gateway logs with full requests, most of them unrated. Curation takes the teacher's unrated answers as targets and
keeps each conversation whole; the student (the tiny local model, fully fine-tuned) meets the upstream champion on
the frozen eval set under the replacement gate: not worse (CI lower bound of the gain above -0.02), at least 50 %
cheaper per 1 000 calls (decode time priced at ``gate.compute_cost_per_hour``), p95 under the limit. An
undertrained student from the same dataset (one epoch at a tenth of the learning rate) is archived with the
reasons. The good one goes through the canary against the upstream champion and is promoted.

Everything is real but the upstream (MLflow's registry and aliases, DVC, Great Expectations, the gateway over
uvicorn, the SQLite warehouse, training and evaluation); ~2-3 min on 2 cores.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow
TASK = "city_extraction"
PRICE_IN, PRICE_OUT = 2.5, 10.0  # per million tokens: a large hosted model's
SECRET = "sk-upstream-distil-0123456789"
CALLS, CONVERSATIONS = 700, 0.3  # the upstream's traffic; share of it sent with a system prompt and a turn before


def _train_and_gate(cfg, engine: sa.Engine, dataset: str, run_key: str, connect) -> dict[str, Any]:
    from ftops.pipeline.finetune import register_candidate, train_candidate
    from ftops.pipeline.finetune_eval import evaluate_candidate

    trained = train_candidate(cfg, TASK, dataset, run_key=run_key)
    report = evaluate_candidate(cfg, TASK, trained["run_id"], connect=connect, engine=engine)
    return {"report": report, "version": register_candidate(TASK, trained["run_id"], report)}


@pytest.fixture(scope="module")
def story(base_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """Cycle 0 (the upstream champion serves the users) and cycle 1 (curate its traffic, train two students, gate
    both against it); the gateway stays up for the canary."""
    import openai
    from ftops_dev.evalsets import labelled_rows
    from ftops_dev.teacher_standin import TeacherStandin
    from ftops_dev.traffic import simulate_traffic

    from ftops.core.config import FtopsConfig, ServingConfig, apply_overrides
    from ftops.deployment import rollout
    from ftops.pipeline.curate import curate_window, dataset_registry, publish_window
    from ftops.pipeline.evalsets import import_evalset
    from ftops.pipeline.governor import decide_task_type
    from ftops.registry.upstream import register_upstream, set_trusted
    from ftops.serving.gateway import build_gateway
    from ftops.warehouse.schema import ensure_schema
    from tests.serving_support import GatewayServer

    tmp = tmp_path_factory.mktemp("distil")
    with TeacherStandin(accuracy=0.95, latency_s=0.1) as upstream, pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_HOME", str(tmp / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("FTOPS_ARTIFACT_ROOT", (tmp / "artifacts").as_uri())
        mp.setenv("FTOPS_USER_KEY_SECRET", "distillation-test")  # which seeded users meet the canary: fixed
        mp.setenv("AIRFLOW_CONN_UPSTREAM_LARGE",
                  json.dumps({"conn_type": "openai", "host": upstream.base_url, "password": SECRET}))  # fmt: skip
        cfg = FtopsConfig.model_validate({
            "task_types": [TASK],
            "training": {"backend": {"kind": "huggingface", "base_model": str(base_model), "method": "full",
                                     "epochs": 10, "learning_rate": 0.003, "batch_size": 8}},
            # the machine that serves the student, priced per hour (a small cloud VM); 0 would fail the saving
            "gate": {"compute_cost_per_hour": 0.5},
            "canary": {"ramp_percent": [50], "duration_hours": 8 / 3600, "min_requests": 10, "min_rated": 10,
                       "min_effect": 0.15, "min_rating_drop": 0.5,
                       # the student decodes on the 2 cores that also run the users and the reviews (p95 0.3-0.6 s
                       # in rounds of 40 calls), the upstream stand-in answers in 0.1 s: a hosted model's 0.5-2 s
                       # would leave the default +200 ms of slack, which a busy CI machine can eat
                       "latency_margin_ms": 1000},
        })  # fmt: skip
        engine = sa.create_engine(f"sqlite:///{tmp / 'warehouse.db'}")
        ensure_schema(engine)
        # 400 frozen rows: at 180 the gain's CI is ±0.04 wide, wider than the margin it must clear
        evalset = [json.dumps(r) for r in labelled_rows(TASK, n=400)]
        assert import_evalset(cfg, engine, TASK, evalset)["accepted"] == 400
        teacher = register_upstream(TASK, "upstream_large", "gpt-4o", PRICE_IN, PRICE_OUT)
        set_trusted(TASK, teacher)
        assert rollout.deploy(TASK, teacher, cfg.canary.traffic_percent) == "champion"
        gateway = build_gateway(ServingConfig(flush_every_s=0.2, alias_ttl_s=0.5), engine,
                                spool_dir=str(tmp / "spool"), cost_per_hour=cfg.gate.compute_cost_per_hour)  # fmt: skip
        with GatewayServer(gateway) as server:
            cycle0 = simulate_traffic(server.base_url, requests=CALLS, concurrency=16, seed=1, task_types=[TASK],
                                      conversation_share=CONVERSATIONS)  # fmt: skip
            gateway.logger.flush()
            print("\n".join(cycle0.lines()))
            staged = curate_window(engine, cfg, TASK, run_key="distil-1")
            assert staged["status"] == "staged", staged
            published = publish_window(engine, cfg, TASK, run_key="distil-1")
            dataset = published["dataset_version"]
            registry = dataset_registry(cfg)
            train = registry.read(registry.get(TASK, dataset.rsplit("/v", 1)[1]), "train")
            # the governor counts the upstream's answers as new data (a trained champion's own answers would not be)
            decision = decide_task_type(engine, cfg, registry, TASK, run_key="distil-1", now=datetime.now(UTC))
            assert decision.train and decision.policy == "new_data", decision
            assert "the champion is upstream model gpt-4o" in decision.reason

            def connect(conn_id: str) -> openai.OpenAI:  # as the DAG's openai_client(conn_id) does from Airflow
                assert conn_id == "upstream_large"
                return openai.OpenAI(api_key=SECRET, base_url=upstream.base_url, max_retries=1)

            student = _train_and_gate(cfg, engine, dataset, "distil-student", connect)
            print(_line("student", student["report"]))
            # the same dataset, one epoch at a tenth of the learning rate
            weak_cfg = apply_overrides(cfg, {"training.backend.epochs": 1, "training.backend.learning_rate": 0.0003})
            weak = _train_and_gate(weak_cfg, engine, dataset, "distil-weak", connect)
            print(_line("weak", weak["report"]))
            yield {"cfg": cfg, "engine": engine, "gateway": gateway, "server": server, "upstream": upstream,
                   "teacher": teacher, "cycle0": cycle0, "staged": staged, "train": train, "student": student,
                   "weak": weak}  # fmt: skip


def _line(name: str, report: dict[str, Any]) -> str:
    y, c, b = report["yardstick"], report["candidate_metrics"], report["baseline_metrics"]
    low, high = y["gain_ci"]
    return (f"{name}: eval set {y['accuracy']:.3f} vs upstream {y['accuracy_baseline']:.3f}, gain CI [{low:+.3f}, "
            f"{high:+.3f}]; cost per 1 000 calls {c['cost_per_1k_calls']:.4g} vs {b['cost_per_1k_calls']:.4g}; "
            f"p95 {c['latency_p95_ms']:.0f} ms -> {report['gate']['decision']}")  # fmt: skip


def test_the_upstreams_unrated_traffic_replays_into_whole_conversations(story) -> None:
    from ftops_dev.traffic import SYSTEM_PROMPTS

    from ftops.warehouse.schema import log_tables

    _, t, _, _ = log_tables("interactions")
    with story["engine"].connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t).where(t.c.task_type == TASK))]
    served = f"ftops-{TASK}/{story['teacher']}"
    assert len(rows) == CALLS and {r["model_version"] for r in rows} == {served}
    unrated = {r["prompt"] for r in rows if r["user_feedback"] is None}
    assert len(unrated) > 0.1 * CALLS  # the simulated users leave ~18 % unrated (a real product's users: most)
    # every answered call is priced from the version's token prices (tokens x price: test_upstream.py)
    assert all(json.loads(r["metadata"])["cost"] > 0 for r in rows if r["success"])
    logged = {json.loads(r["request"])["messages"][-1]["content"]: json.loads(r["request"])["messages"] for r in rows}
    conversations = [ex["messages"] for ex in story["train"] if ex["messages"][0]["role"] == "system"]
    # about CONVERSATIONS of the examples keep the system prompt and the earlier exchange, in order
    assert 0.15 * len(story["train"]) < len(conversations) < 0.45 * len(story["train"])
    for messages in conversations:
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert messages[0]["content"] in SYSTEM_PROMPTS
        request = logged[messages[-2]["content"]]  # the simulator's prompts carry no PII: nothing scrubbed
        assert messages[:-1] == request
    # the trusted teacher's unrated answers are targets: they are in the dataset as often as the rated ones
    trained_on = {ex["messages"][-2]["content"] for ex in story["train"]}
    rated = set(logged) - unrated
    share_unrated, share_rated = len(unrated & trained_on) / len(unrated), len(rated & trained_on) / len(rated)
    print(f"in the training split: {share_unrated:.0%} of the unrated prompts, {share_rated:.0%} of the rated; "
          f"curation: {story['staged']}")
    assert share_unrated > 0.5 * share_rated > 0


def test_a_student_that_is_as_good_and_much_cheaper_passes_the_replacement_gate_and_the_canary(story) -> None:
    from ftops_dev.traffic import simulate_traffic

    from ftops.pipeline.canary import review_canary
    from ftops.pipeline.finetune import deploy_candidate
    from ftops.registry import models as registry

    report = story["student"]["report"]
    print(_line("student", report))
    gate = report["gate"]
    assert gate["decision"] == "deploy", gate["reasons"]
    assert any(r.startswith("ok: accuracy not worse than upstream") for r in gate["reasons"])
    assert any(r.startswith("ok: cost per 1 000 calls") for r in gate["reasons"])
    saving = 1 - report["candidate_metrics"]["cost_per_1k_calls"] / report["baseline_metrics"]["cost_per_1k_calls"]
    assert saving >= story["cfg"].gate.min_saving
    student = story["student"]["version"]
    assert deploy_candidate(story["cfg"], TASK, student)["role"] == "canary"

    verdicts, answers = [], Counter()
    deadline = time.monotonic() + 240
    for i in range(30):  # users keep calling; ftops_canary's review after each round
        traffic = simulate_traffic(story["server"].base_url, requests=40, concurrency=8, seed=100 + i,
                                   task_types=[TASK], conversation_share=CONVERSATIONS)  # fmt: skip
        story["gateway"].logger.flush()
        mine = traffic.versions.get(f"ftops-{TASK}/{student}")
        answers.update(a for _, a in (mine.samples if mine else []))
        verdict = review_canary(story["engine"], story["cfg"], TASK)
        print(f"round {i}: {[f'{k}: {v.summary()}' for k, v in traffic.versions.items()]} -> {verdict['action']}: "
              f"{verdict['reason']}")  # fmt: skip
        verdicts.append(verdict["action"])
        if verdict["action"] in ("promote", "rollback") or time.monotonic() > deadline:
            break
    assert verdicts[-1] == "promote", verdicts
    assert str(registry.alias_version(TASK, registry.CHAMPION).version) == student
    print("the student's answers:", *answers.most_common(6), sep="\n  ")
    assert len(answers) >= 3  # it answers each prompt, not one text to all


def test_a_student_below_the_margin_is_archived_with_the_reasons(story) -> None:
    from ftops.pipeline.finetune import archive_candidate
    from ftops.registry import models as registry

    report = story["weak"]["report"]
    print(_line("weak", report))
    gate = report["gate"]
    assert gate["decision"] == "archive"
    [why] = [r for r in gate["reasons"] if r.startswith("FAIL: accuracy not worse than upstream")]
    assert "need > -0.02, gate.replace_margin" in why
    weak = story["weak"]["version"]
    archive_candidate(TASK, weak, gate["reasons"])
    tags = {str(v.version): v.tags for v in registry.versions(TASK)}[weak]
    assert tags["deployment"] == "archived" and "accuracy not worse than upstream" in tags["archive_reason"]
    assert str(registry.alias_version(TASK, registry.CHAMPION).version) != weak
