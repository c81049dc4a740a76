"""Failure slices: the cluster that started an error-pattern fine-tune, from the governor's decision to the
slice's rows (scrubbed, with corrections as references), its report and the gate's criterion, on SQLite and
on the real PostgreSQL warehouse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pytest
import sqlalchemy as sa
from fakes import fresh_warehouse

from ftops.core.config import GateConfig, apply_overrides, load_config
from ftops.deployment.gate import apply_gate, slice_check
from ftops.evaluation.slices import FailureSlice, describe_slice, slice_fixed_rate, slice_metrics, slice_report
from ftops.pipeline.slices import failure_slice, slice_for_run, triggering_pattern
from ftops.warehouse.schema import ensure_schema, insert_interactions, log_tables

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
TASK = "unit_conversion"
CFG = apply_overrides(load_config(), {"task_types": [TASK]})
EMAIL = "jane.doe@example.com"
UNSAFE = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234567890abcdefghijklmnopqrstuv\n"  # no END line


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A fresh warehouse: an SQLite file, or a schema of its own on the local PostgreSQL server."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield from fresh_warehouse(request.param, tmp_path, url)


def failure(i: int, prompt: str, correction: str | None = None, *, task_type: str = TASK) -> dict[str, object]:
    return {"id": f"f{i}", "timestamp": NOW - timedelta(minutes=30, seconds=i), "task_type": task_type,
            "prompt": prompt, "response": "I cannot help.", "user_feedback": 1, "success": True, "latency_ms": 90,
            "correction": correction}  # fmt: skip


def ask(i: int) -> str:
    return f"Convert {100 + i} degrees Fahrenheit to Kelvin."


def kelvin(i: int) -> str:
    return f"Answer: {round((100 + i - 32) * 5 / 9 + 273.15, 2)} K"


# -- the slice from the log -------------------------------------------------------------------------------------
def test_a_slice_keeps_corrected_rows_scrubbed_and_counts_every_other_row(wh: sa.Engine) -> None:
    from ftops.warehouse.erasure import mark_erased

    insert_interactions(wh, [
        failure(0, ask(0), kelvin(0)),
        failure(1, f"{ask(1)} Reply to {EMAIL}", kelvin(1)),  # PII in the prompt
        failure(2, ask(2)),  # no correction
        failure(3, ask(3), f"{kelvin(3)} (sent to {EMAIL})"),  # PII in the correction
        failure(4, ask(4), "   "),  # a blank correction is none
        failure(5, f"{UNSAFE}{ask(5)}", kelvin(5)),  # a secret that cannot be removed for sure
        failure(6, ask(6), kelvin(6)),  # erased below
        failure(7, ask(7), kelvin(7), task_type="sentiment"),  # another task type's row
        failure(8, ask(8), kelvin(8)),  # not in the cluster
    ])  # fmt: skip
    mark_erased(wh, "interactions", ["f6"], user_key="k", request_key="r")
    ids = ["f3", "f0", "f1", "f2", "f4", "f5", "f6", "f7", "f-gone", "f0"]  # the governor's order; f0 twice
    s = failure_slice(wh, CFG, TASK, "pattern-0000abcd", ids)
    assert s.row_ids == ["f3", "f0", "f1"] and s.sources == ["corrections"] * 3
    assert s.reference == "corrections"
    assert (s.size, s.without_reference, s.unsafe, s.missing) == (6, 2, 1, 3)  # f6 erased, f7 another task, f-gone
    prompts = [r["messages"][0] for r in s.rows]
    assert [m["role"] for m in prompts] == ["user"] * 3
    assert prompts[0]["content"] == ask(3) and prompts[1]["content"] == ask(0)
    assert prompts[2]["content"] == f"{ask(1)} Reply to [EMAIL]"
    assert [r["messages"][1] for r in s.rows] == [{"role": "assistant", "content": f"{kelvin(3)} (sent to [EMAIL])"},
                                                  {"role": "assistant", "content": kelvin(0)},
                                                  {"role": "assistant", "content": kelvin(1)}]  # fmt: skip
    assert EMAIL not in repr(s) and "PRIVATE KEY" not in repr(s)
    assert s.counts() == {"task_type": TASK, "pattern": "pattern-0000abcd", "size": 6, "reference": "corrections",
                          "with_reference": 3, "without_reference": 2, "unsafe": 1, "missing": 3}  # fmt: skip


def test_a_slice_without_any_reference_is_reported_as_such(wh: sa.Engine) -> None:
    insert_interactions(wh, [failure(i, ask(i)) for i in range(4)])
    s = failure_slice(wh, CFG, TASK, "pattern-1", [f"f{i}" for i in range(4)])
    assert (s.reference, s.rows, s.size, s.without_reference) == ("none", [], 4, 4)
    report = slice_report(s, [], [])
    assert report == {"slice.pattern": "pattern-1", "slice.size": "4", "slice.reference": "none",
                      "slice.with_reference": "0"}  # fmt: skip
    assert slice_metrics(report) == {}
    assert describe_slice(report) == ("failure slice pattern-1: no reference (4 prompts, none corrected or "
                                      "relabelled): not measured")  # fmt: skip


def test_a_log_table_without_a_correction_column_gives_no_references(wh: sa.Engine) -> None:
    """A team's own log table from before corrections: read as it is, every row without a reference."""
    old = sa.Table("old_log", sa.MetaData(), *(c.copy() for c in log_tables("old_log")[1].c if c.name != "correction"))
    old.create(wh)
    with wh.begin() as conn:
        conn.execute(sa.insert(old), [{k: v for k, v in failure(i, ask(i)).items() if k != "correction"}
                                      for i in range(3)])  # fmt: skip
    cfg = apply_overrides(CFG, {"interactions_table": "old_log"})
    s = failure_slice(wh, cfg, TASK, "pattern-2", ["f0", "f1", "f2"])
    assert (s.reference, s.size, s.without_reference) == ("none", 3, 3)
    ensure_schema(wh, "old_log")  # the gateway or the governor upgrades it: the column is added, rows kept
    t = log_tables("old_log")[1]
    with wh.begin() as conn:
        conn.execute(sa.update(t).where(t.c.id == "f1").values(correction=kelvin(1)))
    assert failure_slice(wh, cfg, TASK, "pattern-2", ["f0", "f1", "f2"]).row_ids == ["f1"]


class Teacher:
    """A stand-in teacher store: answers for some rows, and a record of what it was asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.known, self.asked = answers, list[list[str]]()

    def answers(self, task_type: str, row_ids):  # noqa: ANN001, ANN201
        assert task_type == TASK
        self.asked.append(list(row_ids))
        return {i: a for i, a in self.known.items() if i in row_ids}


def test_the_teacher_hook_fills_rows_without_a_correction_and_never_outranks_one(wh: sa.Engine) -> None:
    insert_interactions(wh, [failure(0, ask(0), kelvin(0)), failure(1, ask(1)), failure(2, ask(2))])
    teacher = Teacher({"f0": "Answer: 0 K", "f1": kelvin(1)})
    s = failure_slice(wh, CFG, TASK, "pattern-3", ["f0", "f1", "f2"], teacher=teacher)
    assert teacher.asked == [["f1", "f2"]]  # only the rows without a correction
    assert (s.row_ids, s.sources, s.without_reference) == (["f0", "f1"], ["corrections", "teacher"], 1)
    assert s.rows[0]["messages"][1]["content"] == kelvin(0)  # the correction, not the teacher's answer
    assert s.reference == "corrections+teacher"
    only_teacher = failure_slice(wh, CFG, TASK, "pattern-3", ["f1", "f2"], teacher=teacher)
    assert only_teacher.reference == "teacher"


# -- from the governor's decision to the slice -----------------------------------------------------------------
class KeywordEmbedder:
    """Prompts about Fahrenheit share one direction (a cluster); every other prompt gets a direction of its own."""

    name, dim = "keyword-test", 64

    def embed(self, texts):  # noqa: ANN001, ANN201
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in zip(out, texts, strict=True):
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            row[:] = np.random.default_rng(seed).normal(size=self.dim)
            if "Fahrenheit" in text:
                row[0] = 40.0  # cosine ≈ 0.96 between any two of them
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def governed(wh: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store) -> sa.Engine:  # noqa: ANN001
    """A champion trained on v1, a v2 with new examples, and 14 alike failures (5 corrected) among 6 others."""
    from ftops.pipeline.common import dataset_registry
    from ftops.registry import models as registry

    monkeypatch.setenv("FTOPS_HOME", str(tmp_path))
    client = registry.client()
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)
    datasets = dataset_registry(CFG)
    examples = [{"messages": [{"role": "user", "content": f"Convert {i} m to cm."},
                              {"role": "assistant", "content": f"Answer: {i * 100} cm"}]} for i in range(60)]  # fmt: skip
    v1 = datasets.publish(TASK, examples[:40], examples[40:50], {"lineage": {}})
    with mlflow.start_run(experiment_id=registry.experiment_id(TASK)) as run:
        mlflow.set_tags({"task_type": TASK})
    version = registry.register(TASK, run.info.run_id, f"{run.info.artifact_uri}/model", {"dataset_version": v1.tag})
    client.set_registered_model_alias(registry.model_name(TASK), "champion", version)
    datasets.publish(TASK, examples[:48], examples[48:60], {"lineage": {}})  # 10 new examples
    others = [f"Convert {i} miles to km for trip {i}." for i in range(6)]
    insert_interactions(wh, [failure(i, ask(i), kelvin(i) if i % 3 == 0 else None) for i in range(14)]
                        + [failure(100 + i, p) for i, p in enumerate(others)])  # fmt: skip
    return wh


def test_the_fine_tune_finds_its_cluster_through_the_governors_decision(governed: sa.Engine) -> None:
    from ftops.pipeline.governor import govern
    from ftops.warehouse.state import read_decisions

    cfg = apply_overrides(CFG, {"governor.policies": ["error_pattern"]})
    (decision,) = govern(governed, cfg, [TASK], run_key="gov-1", now=NOW, embedder=KeywordEmbedder())
    assert decision["train"] and decision["policy"] == "error_pattern", decision["reason"]
    recorded = decision["details"]["policies"]["error_pattern"]["inputs"]["patterns"][0]
    # what ftops_governor puts in the ftops_finetune run conf: ids only, no prompt
    conf = {"task_type": TASK, "dataset_version": decision["dataset_version"], "reason": decision["reason"],
            "policy": decision["policy"], "decision_key": decision["decision_key"]}  # fmt: skip
    assert "Fahrenheit" not in repr(conf) and recorded["cluster"] in conf["reason"]
    pattern = triggering_pattern(governed, conf["decision_key"])
    assert pattern is not None and pattern.pattern == recorded["cluster"]
    assert sorted(pattern.row_ids) == sorted(f"f{i}" for i in range(14))  # the planted failures, no other
    s = slice_for_run(governed, cfg, TASK, conf["decision_key"])
    assert s is not None and s.pattern == recorded["cluster"] and s.reference == "corrections"
    assert sorted(s.row_ids) == ["f0", "f12", "f3", "f6", "f9"] and (s.size, s.without_reference) == (14, 9)
    # the model answers: 4 of 5 right for the candidate, 1 for the champion
    references = {r: kelvin(int(r[1:])) for r in s.row_ids}
    answers = [r["messages"][1]["content"] for r in s.rows]
    candidate = [a == references[i] and i != "f9" for a, i in zip(answers, s.row_ids, strict=True)]
    champion = [i == "f0" for i in s.row_ids]
    report = slice_report(s, candidate, champion)
    assert report == {"slice.pattern": recorded["cluster"], "slice.size": "14", "slice.reference": "corrections",
                      "slice.with_reference": "5", "metric.slice_fixed_rate": "0.8000",
                      "metric.slice_fixed_rate_champion": "0.2000"}  # fmt: skip
    assert slice_metrics(report) == {"slice_fixed_rate": 0.8, "slice_fixed_rate_champion": 0.2}
    assert describe_slice(report) == (f"failure slice {recorded['cluster']}: fixed 0.800 (4/5) vs champion 0.200 "
                                      "(1/5); 14 prompts, 5 with corrections")  # fmt: skip
    # the fine-tune trains the cluster's rows (by lineage) to training.cluster_share of its rows, sources weighted
    from ftops.pipeline.finetune import sft_rows

    train = [{"k": k} for k in range(50)]
    metadata = {"lineage": {"train": ["f0", "f3", *(f"x{k}" for k in range(48))]},
                "sources": {"train": ["correction", "teacher", *["served"] * 48]}}  # fmt: skip
    rows, inside = sft_rows(cfg, train, metadata, governed, conf["decision_key"])
    share = sum(r["k"] < 2 for r in rows) / len(rows)
    assert inside == 2 and share >= cfg.training.cluster_share and len(rows) > len(train)
    plain, none_inside = sft_rows(cfg, train, metadata, governed, None)  # not an error-pattern run
    assert none_inside == 0 and len(plain) == 48 + 3 + 2  # source weights only: correction x3, teacher x2
    # a decision by another policy, a run started by hand, a decision the warehouse does not hold
    assert read_decisions(governed, decision_key=conf["decision_key"])[0]["run_id"] == decision["finetune_run_id"]
    forced = govern(governed, apply_overrides(cfg, {"governor.policies": []}), [TASK], run_key="gov-2",
                    now=NOW + timedelta(days=3), force=True, reason="a person asks")[0]  # fmt: skip
    assert forced["policy"] == "force" and slice_for_run(governed, cfg, TASK, forced["decision_key"]) is None
    assert slice_for_run(governed, cfg, TASK, None) is None
    with pytest.raises(LookupError, match="no governor decision"):
        triggering_pattern(governed, "gov-unknown/unit_conversion")


# -- rates, report and the gate ---------------------------------------------------------------------------------
def make_slice(n: int, without: int = 0) -> FailureSlice:
    rows = [{"messages": [{"role": "user", "content": ask(i)}, {"role": "assistant", "content": kelvin(i)}]}
            for i in range(n)]  # fmt: skip
    return FailureSlice(TASK, "pattern-9", rows, [f"f{i}" for i in range(n)], ["corrections"] * n,
                        without_reference=without)  # fmt: skip


def test_fixed_rates_and_the_report_check_their_inputs() -> None:
    assert slice_fixed_rate([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="undefined"):
        slice_fixed_rate([])
    with pytest.raises(ValueError, match="3 rows with a reference"):
        slice_report(make_slice(3), [True, True], [False, False, False])
    with pytest.raises(ValueError, match="unknown reference sources"):
        FailureSlice(TASK, "p", [{}], ["f0"], ["served"])
    with pytest.raises(ValueError, match="same length"):
        FailureSlice(TASK, "p", [{}], [], [])


def test_the_slice_rows_are_what_the_evaluation_scores() -> None:
    """The rows' last assistant turn is the reference :func:`ftops.evaluation.evaluate.evaluate` scores against."""
    from ftops.core.chat import split_conversation
    from ftops.evaluation.metrics import score_answers

    s = make_slice(4)
    references = [split_conversation(r["messages"])[1] for r in s.rows]
    _, candidate = score_answers([kelvin(0), kelvin(1), "Answer: 1 K", kelvin(3).upper()], references)
    _, champion = score_answers(["I cannot help."] * 4, references)
    assert slice_report(s, candidate, champion)["metric.slice_fixed_rate"] == "0.7500"
    assert slice_report(s, candidate, champion)["metric.slice_fixed_rate_champion"] == "0.0000"


def test_the_gate_reports_the_slice_and_requires_it_only_when_switched_on() -> None:
    off, on = GateConfig(), GateConfig(require_slice_improvement=True)
    assert off.require_slice_improvement is False and load_config().gate.require_slice_improvement is False
    s = make_slice(5, without=3)
    better = slice_report(s, [True, True, True, False, False], [True, False, False, False, False])
    tie = slice_report(s, [True, False, False, False, False], [False, True, False, False, False])
    worse = slice_report(s, [False] * 5, [True] + [False] * 4)
    none = slice_report(make_slice(0, without=4), [], [])
    assert slice_check(None, on) is None  # not an error-pattern fine-tune: no line
    for report in (better, tie, worse, none):
        ok, line = slice_check(report, off)  # type: ignore[misc]
        assert ok and line.endswith("(reported only: gate.require_slice_improvement is off)")
    assert slice_check(better, on) == (True, "failure slice pattern-9: fixed 0.600 (3/5) vs champion 0.200 (1/5); "
                                       "8 prompts, 5 with corrections (need candidate > champion: "
                                       "gate.require_slice_improvement)")  # fmt: skip
    assert slice_check(tie, on)[0] is False and slice_check(worse, on)[0] is False  # type: ignore[index]
    ok, line = slice_check(none, on)  # type: ignore[misc]
    assert not ok and "nothing to prove the fix on" in line and "no reference (4 prompts" in line
    # inside the gate: one more line; the decision follows it only when the switch is on
    metrics = {"accuracy": 0.9, "perplexity": 2.0, "latency_p50_ms": 10.0, "n": 100.0}
    baseline = {**metrics, "accuracy": 0.8}
    plain = apply_gate(metrics, baseline, off)
    assert plain.passed and not any("failure slice" in r for r in plain.reasons)
    reported = apply_gate(metrics, baseline, off, failure_slice=worse)
    assert reported.passed and reported.reasons[:-1] == plain.reasons
    assert reported.reasons[-1].startswith("ok: failure slice pattern-9: fixed 0.000 (0/5) vs champion 0.200 (1/5)")
    required = apply_gate(metrics, baseline, on, failure_slice=worse)
    assert not required.passed and required.reasons[-1].startswith("FAIL: failure slice pattern-9")
    assert apply_gate(metrics, baseline, on, failure_slice=better).passed


# -- corrections in the log schema ------------------------------------------------------------------------------
def test_a_logged_correction_is_text_and_leaves_the_ids_of_rows_without_one_unchanged() -> None:
    from ftops.serving.spool_rows import check_row

    row = {"timestamp": "2026-11-01T10:00:00+00:00", "task_type": "sentiment", "prompt": "I loved it",
           "response": "Sentiment: positive.", "user_feedback": 5, "success": True, "latency_ms": 120}  # fmt: skip
    assert check_row(row, fill=False)["id"] == "he3e12f1a0d1d788dfd0415a0ef3eb29"  # as before the column existed
    corrected = check_row({**row, "correction": "Sentiment: negative."}, fill=False)
    assert corrected["correction"] == "Sentiment: negative." and corrected["id"] != "he3e12f1a0d1d788dfd0415a0ef3eb29"
    with pytest.raises(ValueError, match="correction must be text"):
        check_row({**row, "correction": 3}, fill=False)
