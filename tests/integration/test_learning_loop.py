"""The loop learns from its failures: two cycles on the drifting simulator, through the pipeline's own steps
(real warehouse, curation, DVC, MLflow, training, evaluation, the shipped gate, and a stand-in teacher reached
through the real ``openai`` client).

Cycle 1 trains the champion on the first cities. Cycle 2's traffic asks about new cities as well (drift), which the
served model gets wrong most of the time; some users type the right answer (corrections) and the teacher answers
the failed and low-rated prompts that nobody corrected. The treatment curates that traffic with corrections and
teacher answers as targets; the control curates the very same rows with served answers only
(``curation.target_sources: []``, the teacher not asked). Both candidates meet the same champion on the same frozen
eval set (a share of it about the new cities) under the shipped gate: the treatment must pass and the control must
not, which shows that the gain comes from the new targets.

The yardstick's own test shares cycle 1 (one champion trained for both, ~40 s of CI): from the same warehouse, the
champion answers new prompts as it would in service, and those answers, rated well, are a third cycle 2's logs. Its
test split then holds the champion's own answers as references (on which the champion is right by construction):
the gate must decide on the frozen eval set and leave those rows out of the split's figure. Each cycle 2 curates its
own copy of the warehouse after cycle 1; the dataset and model registries are shared (they number the versions).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow
TASK = "city_extraction"
T1 = datetime(2026, 12, 1, tzinfo=UTC)
T2 = T1 + timedelta(days=1)
DRIFT = 0.3  # share of cycle 2's calls (and of the eval set) about the new cities


@pytest.fixture(scope="module")
def setting(base_model: Path, tmp_path_factory: pytest.TempPathFactory):
    from ftops.core.config import FtopsConfig

    tmp = tmp_path_factory.mktemp("learning")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_HOME", str(tmp / "home"))  # stores of its own
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("FTOPS_ARTIFACT_ROOT", (tmp / "artifacts").as_uri())
        cfg = FtopsConfig.model_validate({"task_types": [TASK], "training": {"backend": {
            "kind": "huggingface", "base_model": str(base_model), "method": "full", "epochs": 10,
            "learning_rate": 0.003, "batch_size": 8}},
            "teacher": {"enabled": True, "model": "standin-teacher", "max_rows": 2000, "max_cost": 5.0}})  # fmt: skip
        yield cfg, tmp


@pytest.fixture(scope="module")
def cycle1(setting) -> dict[str, Any]:
    """The frozen eval set (a share of it about the new cities) and cycle 1's champion, trained on the first cities
    with the teacher off; the warehouse after it is ``cycle1.db``, which each cycle 2 copies."""
    from ftops_dev.evalsets import labelled_rows
    from ftops_dev.known_truth import is_drifted
    from ftops_dev.simulate import generate_interactions

    from ftops.deployment import rollout
    from ftops.pipeline.evalsets import import_evalset
    from ftops.warehouse.schema import ensure_schema, insert_interactions

    cfg, tmp = setting
    engine = sa.create_engine(f"sqlite:///{tmp / 'cycle1.db'}")
    ensure_schema(engine)
    evalset = labelled_rows(TASK, drift_share=DRIFT)
    imported = import_evalset(cfg, engine, TASK, [json.dumps(r) for r in evalset])
    assert imported["evalset"] == f"evalset/{TASK}/v1" and imported["accepted"] == len(evalset)
    drifted = sum(is_drifted(TASK, r["prompt"]) for r in evalset)
    assert 0.2 * len(evalset) <= drifted <= 0.4 * len(evalset)

    insert_interactions(engine, generate_interactions(1000, seed=7, start=T1, task_types=[TASK]))
    first = _cycle(cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"enabled": False})}),
                   engine, "cycle-1", now=T1)  # fmt: skip
    assert first["report"]["gate"]["decision"] == "deploy", first["report"]["gate"]["reasons"]
    assert rollout.deploy(TASK, first["version"], 10) == "champion"
    engine.dispose()
    return {**first, "evalset_rows": imported["rows"]}


def _copy(tmp: Path, name: str) -> sa.Engine:
    """A warehouse of its own for one cycle 2: cycle 1's, copied."""
    shutil.copy(tmp / "cycle1.db", tmp / f"{name}.db")
    return sa.create_engine(f"sqlite:///{tmp / f'{name}.db'}")


def _cycle(cfg, engine: sa.Engine, run_key: str, now: datetime, teacher_client=None) -> dict[str, Any]:
    from ftops.pipeline.curate import curate_window, publish_window
    from ftops.pipeline.finetune import register_candidate, train_candidate
    from ftops.pipeline.finetune_eval import evaluate_candidate

    staged = curate_window(engine, cfg, TASK, run_key=run_key, now=now, teacher_client=teacher_client)
    assert staged["status"] == "staged", staged
    published = publish_window(engine, cfg, TASK, run_key=run_key)
    trained = train_candidate(cfg, TASK, published["dataset_version"], run_key=run_key)
    report = evaluate_candidate(cfg, TASK, trained["run_id"], engine=engine)
    version = register_candidate(TASK, trained["run_id"], report)
    return {"staged": staged, "dataset": published["dataset_version"], "report": report, "version": version,
            "run_id": trained["run_id"]}  # fmt: skip


def _line(name: str, cycle: dict[str, Any]) -> str:
    r, y = cycle["report"], cycle["report"]["yardstick"]
    low, high = y["gain_ci"]
    return (f"{name:9s} {cycle['dataset']}: eval set {y['accuracy']:.3f} vs champion {y['accuracy_baseline']:.3f}, "
            f"gain CI [{low:+.3f}, {high:+.3f}] -> {r['gate']['decision']}")  # fmt: skip


def test_corrections_and_the_teacher_make_a_candidate_that_beats_its_champion_and_the_control_does_not(
    setting, cycle1: dict[str, Any]
) -> None:
    import mlflow
    from ftops_dev.known_truth import is_drifted
    from ftops_dev.simulate import generate_interactions
    from ftops_dev.teacher_standin import TeacherStandin
    from openai import OpenAI

    from ftops.pipeline.common import dataset_registry
    from ftops.warehouse.schema import insert_interactions

    cfg, tmp = setting
    first = cycle1
    # cycle 2's traffic, in two warehouses that hold the same rows: the treatment's and the control's
    treated, control = _copy(tmp, "treated"), _copy(tmp, "control")
    traffic = generate_interactions(800, seed=8, start=T2, days=1, task_types=[TASK], drift_share=DRIFT,
                                    drift_from_day=1)  # fmt: skip
    assert sum(r["correction"] is not None for r in traffic) > 20
    for engine in (treated, control):
        insert_interactions(engine, traffic)

    with TeacherStandin(accuracy=0.95) as teacher:
        client = OpenAI(base_url=teacher.base_url, api_key="standin", max_retries=0)
        treatment = _cycle(cfg, treated, "cycle-2", now=T2 + timedelta(hours=1), teacher_client=lambda: client)
        teacher_requests = len(teacher.requests)
    served_only = cfg.model_copy(update={"curation": cfg.curation.model_copy(update={"target_sources": []})})
    control_run = _cycle(served_only, control, "cycle-2-control", now=T2 + timedelta(hours=1))

    datasets = dataset_registry(cfg)
    counts = {name: datasets.read_metadata(datasets.get(TASK, run["dataset"]))["source_counts"]["train"]
              for name, run in (("treatment", treatment), ("control", control_run))}  # fmt: skip
    relabelled = treatment["staged"]["teacher"]
    print(f"\ntargets by source: {counts}\nteacher: {relabelled['calls']} calls, cost {relabelled['cost']:.4f}, "
          f"{relabelled['accepted']} accepted, rejected {relabelled['rejected']}")  # fmt: skip
    for name, run in (("treatment", treatment), ("control", control_run)):
        print(_line(name, run))
    outputs = [json.loads(line) for line in mlflow.artifacts.load_text(
        f"runs:/{treatment['run_id']}/evaluation/outputs.jsonl").splitlines()]  # fmt: skip
    for o in [o for o in outputs if is_drifted(TASK, o["prompt"])][:5]:
        print(f"{o['prompt'][:70]!r}\n  candidate {o['candidate']!r}\n  champion  {o['baseline']!r}")

    assert counts["treatment"].get("correction", 0) > 0 and counts["treatment"].get("teacher", 0) > 0
    assert set(counts["control"]) == {"served"}
    assert relabelled["calls"] > 0 and teacher_requests == relabelled["calls"]
    # the shipped gate (+0.05, CI lower bound above zero) passes the treatment and archives the control
    r, c = treatment["report"], control_run["report"]
    assert r["baseline"] == c["baseline"] == f"champion v{first['version']}"
    assert r["yardstick"]["tag"] == c["yardstick"]["tag"] == f"evalset/{TASK}/v1"
    assert r["gate"]["decision"] == "deploy" and r["yardstick"]["gain_ci"][0] > 0, r["gate"]["reasons"]
    assert c["gate"]["decision"] == "archive", c["gate"]["reasons"]
    # what changed is the new cities: the treatment answers them, the champion and the control mostly do not
    new = [o for o in outputs if is_drifted(TASK, o["prompt"])]
    assert sum(o["candidate_correct"] for o in new) > 2 * sum(o["baseline_correct"] for o in new)
    assert len({o["candidate"] for o in outputs}) > 20


def _served_by_champion(champion: str, n: int, folder: Path) -> list[dict]:
    """New prompts answered by the champion (greedy, as served), logged as its well-rated calls."""
    from ftops_dev.simulate import generate_interactions

    from ftops.evaluation.generate import generate_answers, load_model, render_prompts
    from ftops.pipeline.common import mlflow_download, served_model_version
    from ftops.pipeline.finetune_eval import version_spec
    from ftops.registry import models as registry

    mv = registry.client().get_model_version(registry.model_name(TASK), champion)
    tags, uri = version_spec(mv)
    rows = [r for r in generate_interactions(n, seed=21, task_types=[TASK]) if r["success"]]
    model = load_model(tags["base_model"], mlflow_download(uri, str(folder)))
    prompts = render_prompts(model, [{"messages": [{"role": "user", "content": r["prompt"]},
                                                   {"role": "assistant", "content": ""}]} for r in rows])  # fmt: skip
    answers = generate_answers(model, prompts, progress=False).texts
    for i, (r, answer) in enumerate(zip(rows, answers, strict=True)):
        r.update(id=f"served-{i}", response=answer, user_feedback=5, success=True,
                 model_version=served_model_version(TASK, champion), timestamp=T1 + timedelta(minutes=1 + i % 50))
    return rows


def test_the_gate_decides_on_the_evalset_and_leaves_the_incumbents_own_answers_out_of_the_split(
    setting, cycle1: dict[str, Any]
) -> None:
    from ftops.registry import models as registry
    from ftops.warehouse.schema import insert_interactions

    cfg, tmp = setting
    first = cycle1
    r1 = first["report"]
    assert r1["yardstick"]["tag"] == f"evalset/{TASK}/v1" and r1["yardstick"]["n"] == first["evalset_rows"]
    assert r1["candidate_metrics"]["n"] == first["evalset_rows"]  # the gate's numbers are the eval set's
    assert r1["split"]["excluded_incumbent_rows"] == 0  # no champion yet: nobody's own answers to leave out

    engine = _copy(tmp, "served")
    insert_interactions(engine, _served_by_champion(first["version"], 700, tmp / "champion"))
    second = _cycle(cfg, engine, "cycle-2-served", now=T1 + timedelta(hours=2))
    r2 = second["report"]
    from ftops.pipeline.common import dataset_registry

    datasets = dataset_registry(cfg)
    v2 = datasets.get(TASK, second["dataset"])
    served_by = datasets.read_metadata(v2)["served_by"]["test"]
    incumbent = f"{registry.model_name(TASK)}/{first['version']}"
    own = sum(by == incumbent for by in served_by)
    assert own >= 10, served_by  # cycle 2's test split holds the champion's own answers
    assert r2["split"]["excluded_incumbent_rows"] == own and r2["split"]["n"] == len(served_by) - own
    assert r2["yardstick"]["tag"] == f"evalset/{TASK}/v1" and r2["candidate_metrics"]["n"] == first["evalset_rows"]
    assert r2["baseline"] == f"champion v{first['version']}" and r2["champion_version"] == first["version"]
    assert r2["gate"]["reasons"][0].startswith(f"ok: yardstick evalset/{TASK}/v1")
    # the champion on its own answers: right by construction (but where curation scrubbed PII out of the prompt
    # it answered), whatever it knows: why they are left out (on city extraction it also scores ~1.0 on the rest)
    own_rows = [row for row, by in zip(datasets.read(v2, "test"), served_by, strict=True) if by == incumbent]
    assert _accuracy(cfg, first["version"], own_rows) >= 0.95
    assert r2["baseline_metrics"]["accuracy"] == pytest.approx(r1["candidate_metrics"]["accuracy"])  # same set

    tags = registry.client().get_model_version(registry.model_name(TASK), second["version"]).tags
    assert tags["ftops.evalset"] == f"evalset/{TASK}/v1"
    assert float(tags["metric.evalset_accuracy"]) == pytest.approx(r2["yardstick"]["accuracy"], abs=1e-4)
    assert float(tags["metric.evalset_accuracy_champion"]) == pytest.approx(r2["yardstick"]["accuracy_baseline"], abs=1e-4)
    low, high = float(tags["metric.evalset_gain_ci_low"]), float(tags["metric.evalset_gain_ci_high"])
    assert low <= float(tags["metric.evalset_accuracy"]) - float(tags["metric.evalset_accuracy_champion"]) <= high
    assert int(tags["split.excluded_incumbent_rows"]) == own and "metric.split_accuracy" in tags
    champion_tags = registry.client().get_model_version(registry.model_name(TASK), first["version"]).tags
    assert float(champion_tags["evalset_accuracy.v1"]) == float(tags["metric.evalset_accuracy_champion"])
    run = registry.client().get_run(second["run_id"])
    assert {"evalset_accuracy", "evalset_accuracy_champion", "evalset_gain_ci_low", "evalset_gain_ci_high",
            "split_accuracy", "split_accuracy_champion"} <= set(run.data.metrics)  # fmt: skip
    assert run.data.tags["ftops.evalset"] == f"evalset/{TASK}/v1"

    # what the models say on the eval set: printed, and not one answer to every prompt
    import mlflow  # noqa: PLC0415

    outputs = [json.loads(line) for line in mlflow.artifacts.load_text(
        f"runs:/{second['run_id']}/evaluation/outputs.jsonl").splitlines()]  # fmt: skip
    for o in outputs[:3]:
        print(f"{o['prompt'][:60]!r}\n  candidate {o['candidate']!r}\n  champion  {o['baseline']!r}")
    assert len({o["candidate"] for o in outputs}) > 10 and len({o["baseline"] for o in outputs}) > 10


def _accuracy(cfg, version: str, rows: list[dict]) -> float:
    import tempfile

    from ftops.pipeline.finetune_eval import evaluate_versions, version_spec
    from ftops.registry import models as registry

    mv = registry.client().get_model_version(registry.model_name(TASK), version)
    with tempfile.TemporaryDirectory() as tmp:
        [result] = evaluate_versions([version_spec(mv)], rows, cfg, tmp, None, timed=False)
    return float(result.metrics["accuracy"])
