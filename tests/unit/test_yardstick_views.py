"""Every version on one yardstick: the tags the gate records (issue 20's contract) read once
(:mod:`ftops.registry.yardstick`) and shown by ``ftops summary``, ``ftops status``, the FT-Ops page (its data and
the chart its script draws) and ``explain_model``.

The registry is real (``tests/status_support.py``: previous v1, champion v2, canary v3, archived v4 of
``ftops-sentiment``) and the tests set the gate's tags on its versions directly: two eval-set versions, v1 not
yet evaluated on the latest, a failure slice with references (v3) and one without (v4), judge figures (v4); and
a second task type whose versions predate eval sets, so it falls back to each version's own test split.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ftops.registry.yardstick import (
    NOT_COMPARABLE,
    OWN_SPLIT,
    SPLIT_WITHOUT_INCUMBENT,
    accuracy_by_version,
    evalset_number,
    yardstick,
)
from tests.status_support import TASK, State, build_state, free_port

ROOT = Path(__file__).resolve().parents[2]
LEGACY = "support"  # a task type registered before eval sets: own test split only
EVALSET_V2 = f"evalset/{TASK}/v2"
V2_CHAMPION = {  # the champion: gated on eval-set v1, re-evaluated on v2 when the canary's gate ran
    "ftops.evalset": f"evalset/{TASK}/v1", "metric.evalset_accuracy": "0.8000",
    "metric.evalset_accuracy_champion": "0.7000", "metric.evalset_gain_ci_low": "0.0200",
    "metric.evalset_gain_ci_high": "0.1800", "evalset_accuracy.v1": "0.8000", "evalset_accuracy.v2": "0.7800",
    "baseline": "champion v1",
}  # fmt: skip
V3_CANARY = {  # gated on eval-set v2, triggered by an error pattern whose prompts have corrections
    "ftops.evalset": EVALSET_V2, "baseline": "champion v2", "metric.evalset_accuracy": "0.8600",
    "metric.evalset_accuracy_champion": "0.7800",
    "metric.evalset_gain_ci_low": "0.0300", "metric.evalset_gain_ci_high": "0.1300", "evalset_accuracy.v2": "0.8600",
    "metric.split_accuracy": "0.9000", "metric.split_accuracy_champion": "0.8800", "split.excluded_incumbent_rows": "7",
    "slice.pattern": "pattern-1a2b3c4d", "slice.size": "12", "slice.reference": "corrections",
    "metric.slice_fixed_rate": "0.7500", "metric.slice_fixed_rate_champion": "0.2500",
}  # fmt: skip
V4_ARCHIVED = {  # gated on eval-set v2 and by a judge; its slice has no reference
    "ftops.evalset": EVALSET_V2, "baseline": "champion v2", "metric.evalset_accuracy": "0.7200",
    "metric.evalset_accuracy_champion": "0.7800",
    "metric.evalset_gain_ci_low": "-0.1400", "metric.evalset_gain_ci_high": "0.0200", "evalset_accuracy.v2": "0.7200",
    "slice.pattern": "pattern-99aa00bb", "slice.size": "5", "slice.reference": "none",
    "judge.model": "judge-mini", "metric.judge_win_rate": "0.3500", "metric.judge_net_win": "-0.2000",
    "metric.judge_net_win_ci_low": "-0.3500", "metric.judge_net_win_ci_high": "-0.0500", "metric.judge_calls": "240",
    "metric.judge_cost": "0.0120", "judge.kappa": "0.8100",
}  # fmt: skip


# -- the tags, read ------------------------------------------------------------------------------------------
def test_a_gate_on_an_eval_set_reads_its_figures_and_like_for_like_record() -> None:
    y = yardstick(V3_CANARY, confidence=0.95)
    assert y["gate"] == {"yardstick": EVALSET_V2, "kind": "evalset", "comparable": True, "accuracy": 0.86,
                         "against": "champion v2", "against_accuracy": 0.78, "gain": 0.08,
                         "gain_ci": {"low": 0.03, "high": 0.13, "confidence": 0.95}}  # fmt: skip
    assert y["evalset_accuracy"] == {"v2": 0.86}
    assert y["split"] == {"accuracy": 0.9, "champion_accuracy": 0.88, "excluded_incumbent_rows": 7}
    assert y["slice"] == {"pattern": "pattern-1a2b3c4d", "size": 12, "reference": "corrections", "has_reference": True,
                          "fixed_rate": 0.75, "fixed_rate_champion": 0.25}  # fmt: skip
    assert y["judge"] is None and y["own_split"] is None
    # the gate's figure counts as the like-for-like one of its eval-set version when that tag is missing
    only_gate = {k: v for k, v in V3_CANARY.items() if not k.startswith("evalset_accuracy.")}
    assert yardstick(only_gate)["evalset_accuracy"] == {"v2": 0.86}


def test_a_gate_without_eval_set_and_a_legacy_version_say_which_split() -> None:
    split = yardstick({"ftops.evalset": "none", "metric.split_accuracy": "0.9",
                       "metric.split_accuracy_champion": "0.85", "split.excluded_incumbent_rows": "31",
                       "metric.accuracy": "0.97"},
                      run_metrics={"accuracy_gain_ci_low": 0.01, "accuracy_gain_ci_high": 0.09})  # fmt: skip
    assert split["gate"]["yardstick"] == SPLIT_WITHOUT_INCUMBENT and split["gate"]["kind"] == "split"
    assert (split["gate"]["accuracy"], split["gate"]["against_accuracy"], split["gate"]["gain"]) == (0.9, 0.85, 0.05)
    assert split["gate"]["gain_ci"] == {"low": 0.01, "high": 0.09, "confidence": None}
    assert not split["gate"]["comparable"] and split["evalset_accuracy"] == {}
    legacy = yardstick({"metric.accuracy": "0.6", "baseline.accuracy": "0.5", "baseline": "base model x"})
    assert legacy["gate"] | {"gain_ci": None} == {"yardstick": OWN_SPLIT, "kind": "own_split", "comparable": False,
                                                  "accuracy": 0.6, "against": "base model x",
                                                  "against_accuracy": 0.5, "gain": 0.1, "gain_ci": None}  # fmt: skip
    assert legacy["own_split"] == {"accuracy": 0.6, "baseline_accuracy": 0.5} and legacy["split"] is None


def test_slices_without_reference_judges_and_junk_tags() -> None:
    y = yardstick(V4_ARCHIVED)
    assert y["slice"] == {"pattern": "pattern-99aa00bb", "size": 5, "reference": "none", "has_reference": False,
                          "fixed_rate": None, "fixed_rate_champion": None}  # fmt: skip
    assert y["judge"] == {"model": "judge-mini", "win_rate": 0.35, "net_win": -0.2,
                          "net_win_ci": {"low": -0.35, "high": -0.05, "confidence": None}, "calls": 240,
                          "cost": 0.012, "kappa": 0.81}  # fmt: skip
    assert yardstick({**V4_ARCHIVED, "judge.kappa": "none"})["judge"]["kappa"] is None  # relied on no calibration
    junk = yardstick({"ftops.evalset": "evalset/x/v0", "evalset_accuracy.v3": "nan", "evalset_accuracy.vx": "0.5",
                      "evalset_accuracy.v4": "0.5000", "metric.evalset_accuracy": "high"})  # fmt: skip
    assert junk["evalset_accuracy"] == {"v4": 0.5} and junk["gate"]["accuracy"] is None
    assert [evalset_number(t) for t in ("evalset/a/v12", "none", "evalset/a/v0", None, "dataset/a/v1")] == [
        12, None, None, None, None]


def test_versions_are_compared_on_the_latest_eval_set_any_of_them_answered() -> None:
    sticks = {"1": yardstick({"evalset_accuracy.v1": "0.7", "metric.accuracy": "0.6"}), "2": yardstick(V2_CHAMPION),
              "10": yardstick(V3_CANARY), "4": yardstick(V4_ARCHIVED)}  # fmt: skip
    c = accuracy_by_version(TASK, sticks)
    assert (c["yardstick"], c["evalset_version"], c["comparable"]) == (EVALSET_V2, 2, True)
    assert c["title"] == c["column"] == f"accuracy on {EVALSET_V2}"
    assert [(p["version"], p["accuracy"], p["note"]) for p in c["points"]] == [
        ("1", None, "not yet evaluated on v2"), ("2", 0.78, None), ("4", 0.72, None), ("10", 0.86, None)]
    assert {p["yardstick"] for p in c["points"][1:]} == {EVALSET_V2} and c["points"][0]["yardstick"] is None
    legacy = accuracy_by_version(LEGACY, {"2": yardstick({"metric.accuracy": "0.9"}), "1": yardstick({}),
                                          "3": yardstick({"ftops.evalset": "none", "metric.split_accuracy": "0.8"})})
    assert (legacy["yardstick"], legacy["comparable"]) == (OWN_SPLIT, False)
    assert legacy["title"] == f"accuracy on {NOT_COMPARABLE}" and legacy["column"] == f"accuracy on {OWN_SPLIT}"
    assert [(p["version"], p["accuracy"], p["yardstick"]) for p in legacy["points"]] == [
        ("1", None, None), ("2", 0.9, OWN_SPLIT), ("3", 0.8, SPLIT_WITHOUT_INCUMBENT)]
    assert accuracy_by_version(TASK, {})["points"] == []


# -- shown everywhere, from a real registry ------------------------------------------------------------------
@pytest.fixture(scope="module")
def state(tmp_path_factory) -> State:
    from ftops.registry import models as registry

    with pytest.MonkeyPatch.context() as mp:
        s = build_state(mp, tmp_path_factory.mktemp("yardstick"), FTOPS_AIRFLOW_URL=f"http://127.0.0.1:{free_port()}")
        registry.set_tags(TASK, "1", {"evalset_accuracy.v1": "0.7000"})
        for version, tags in (("2", V2_CHAMPION), ("3", V3_CANARY), ("4", V4_ARCHIVED)):
            registry.set_tags(TASK, version, tags)
        import mlflow

        for accuracy in ("0.9100", "0.8700"):  # before eval sets: each on its own test split
            with mlflow.start_run(experiment_id=registry.experiment_id(LEGACY)) as run:
                mlflow.log_metrics({"accuracy_gain": 0.05, "accuracy_gain_ci_low": 0.01, "accuracy_gain_ci_high": 0.09})
            registry.register(LEGACY, run.info.run_id, f"{run.info.artifact_uri}/model",
                              {"metric.accuracy": accuracy, "baseline.accuracy": "0.8600", "decision": "deploy",
                               "baseline": "base model local:tiny-gpt2"})  # fmt: skip
        registry.client().set_registered_model_alias(registry.model_name(LEGACY), "champion", "2")
        yield s


def test_status_shows_every_version_on_the_latest_eval_set(state: State) -> None:
    from ftops.core.airflow_api import AirflowAPI
    from ftops.pipeline.status import collect_status
    from ftops.pipeline.status_text import render_status

    status = collect_status(state.cfg, state.engine, AirflowAPI(), now=state.now)
    models = {m["task_type"]: m for m in status["models"]}
    c = models[TASK]["accuracy_by_version"]
    assert c["yardstick"] == EVALSET_V2
    assert [(p["version"], p["role"], p["accuracy"]) for p in c["points"]] == [
        ("1", "previous", None), ("2", "champion", 0.78), ("3", "canary", 0.86), ("4", "archived", 0.72)]
    assert models[TASK]["canary"]["yardstick"]["slice"]["fixed_rate"] == 0.75
    assert models[LEGACY]["accuracy_by_version"]["comparable"] is False
    text = render_status(status)
    section = text[text.index(f"[{TASK}]") : text.index(f"[{LEGACY}]")]
    assert f"every version, accuracy on {EVALSET_V2}:" in section
    row = {line.split()[0]: line for line in section.splitlines()
           if line.strip().startswith(("v1 ", "v2 ", "v3 ", "v4 "))}  # fmt: skip
    assert "not yet evaluated on v2" in row["v1"] and OWN_SPLIT in row["v1"]  # its gate predates eval sets
    assert "0.780" in row["v2"] and f"evalset/{TASK}/v1" in row["v2"]
    assert "+0.100, 95 % CI [+0.020, +0.180]" in row["v2"]
    assert "0.860" in row["v3"] and EVALSET_V2 in row["v3"] and "+0.080, 95 % CI [+0.030, +0.130]" in row["v3"]
    assert f"gate on {EVALSET_V2}: accuracy 0.860 vs 0.780" in section
    assert f"{SPLIT_WITHOUT_INCUMBENT}: accuracy 0.900 vs 0.880 (7 incumbent-written rows excluded)" in section
    fixed = "failure slice pattern-1a2b3c4d (12 prompts, references: corrections): fixed 0.750 vs champion 0.250"
    assert fixed in section
    assert "accuracy 0.800 vs 0.600" in section  # the legacy figure, still shown, labelled
    legacy = text[text.index(f"[{LEGACY}]") :]
    assert f"every version, accuracy on {NOT_COMPARABLE}:" in legacy


def test_summary_prints_the_table_per_task_type(state: State) -> None:
    from ftops.pipeline.summary import summary_text

    text = summary_text(state.cfg, state.engine)
    section = text[text.index(f"[{TASK}]") : text.index(f"[{LEGACY}]")]
    head = f"  every version, accuracy on {EVALSET_V2}:"
    assert head in section
    table = section[section.index(head) :].splitlines()[1:6]
    assert table[0].split() == ["version", "role", "accuracy", "on", EVALSET_V2, "yardstick", "of", "its", "gate",
                                "gain", "CI"]  # fmt: skip
    assert table[1].split()[:2] == ["v1", "previous"] and "not yet evaluated on v2" in table[1]
    assert table[2].split()[:3] == ["v2", "champion", "0.780"] and "95 % CI [+0.020, +0.180]" in table[2]
    assert table[3].split()[:4] == ["v3", "canary", "0.860", EVALSET_V2]
    assert table[4].split()[:4] == ["v4", "archived", "0.720", EVALSET_V2] and "-0.060" in table[4]
    judge = "judge judge-mini: win rate 0.350, net win -0.200 CI [-0.350, -0.050], kappa 0.810 (240 calls, $0.0120)"
    assert judge in section
    assert "failure slice pattern-99aa00bb (5 prompts): no reference, so no fix rate" in section
    assert "why: ok accuracy 0.800" in section and "in service: champion (traffic 100 %)" in section  # kept
    legacy = text[text.index(f"[{LEGACY}]") :]
    assert f"[{LEGACY}] no dataset version" in legacy and f"every version, accuracy on {NOT_COMPARABLE}:" in legacy
    assert "version  role      accuracy on own test split  yardstick of its gate  gain CI" in legacy
    # before eval sets the gate's CI is on its run: shown from there
    [v2] = [line.split() for line in legacy.splitlines() if line.strip().startswith("v2 ")]
    assert v2[:4] == ["v2", "champion", "0.870", OWN_SPLIT.split()[0]]
    assert "+0.010, 95 % CI [+0.010, +0.090]" in legacy


def test_explain_model_returns_the_eval_set_figures(state: State) -> None:
    from ftops.pipeline.operations import explain_model

    canary = explain_model(state.cfg, state.engine, TASK, 3)
    y = canary["yardstick"]
    assert y["gate"]["yardstick"] == EVALSET_V2 and y["gate"]["gain_ci"] == {"low": 0.03, "high": 0.13,
                                                                            "confidence": 0.95}  # fmt: skip
    assert y["split"]["excluded_incumbent_rows"] == 7 and y["slice"]["fixed_rate_champion"] == 0.25
    assert canary["on_latest_evalset"] == {"yardstick": EVALSET_V2, "comparable": True, "accuracy": 0.86, "note": None}
    previous = explain_model(state.cfg, state.engine, TASK, 1)
    assert previous["on_latest_evalset"]["note"] == "not yet evaluated on v2"
    assert previous["yardstick"]["gate"]["kind"] == "own_split"
    assert explain_model(state.cfg, state.engine, TASK, 4)["yardstick"]["judge"]["kappa"] == 0.81


@pytest.fixture(scope="module")
def dashboard(state: State) -> dict[str, Any]:
    from ftops.core.airflow_api import AirflowAPI
    from ftops.pipeline.dashboard import collect_dashboard

    return collect_dashboard(state.cfg, state.engine, AirflowAPI(), now=state.now)


def test_the_page_data_plots_the_eval_set_figures(dashboard: dict[str, Any]) -> None:
    by_type = {t["task_type"]: t for t in dashboard["task_types"]}
    c = by_type[TASK]["accuracy_by_version"]
    assert c["title"] == f"accuracy on {EVALSET_V2}"
    assert [(p["version"], p["accuracy"]) for p in c["points"]] == [("1", None), ("2", 0.78), ("3", 0.86), ("4", 0.72)]
    assert c["points"][3]["judge"]["model"] == "judge-mini" and c["points"][2]["slice"]["reference"] == "corrections"
    assert by_type[TASK]["champion"]["yardstick"]["gate"]["yardstick"] == f"evalset/{TASK}/v1"
    legacy = by_type[LEGACY]["accuracy_by_version"]
    assert not legacy["comparable"] and [p["accuracy"] for p in legacy["points"]] == [0.91, 0.87]
    assert legacy["points"][1]["gate"]["gain_ci"]["low"] == 0.01  # read from the run by the page
    json.dumps(dashboard, allow_nan=False)  # strict JSON


def _node() -> str | None:
    """node on PATH, else the one Playwright ships (a dev dependency, so CI has it)."""
    if found := shutil.which("node"):
        return found
    try:
        from playwright._impl._driver import compute_driver_executable

        node = Path(compute_driver_executable()[0])
    except Exception:  # noqa: BLE001 - no Playwright: no node
        return None
    return str(node) if node.is_file() else None


def test_the_page_draws_the_chart_and_table_from_that_data(dashboard: dict[str, Any], tmp_path: Path) -> None:
    node = _node()
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no node (PATH or Playwright's driver) to run the page's script")
        pytest.skip("no node to run the page's script")
    data = tmp_path / "dashboard.json"
    data.write_text(json.dumps(dashboard))
    script = ROOT / "include" / "ftops_airflow" / "ui" / "static" / "page.js"
    out = subprocess.run([node, str(ROOT / "tests" / "page_render.js"), str(script), str(data)], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    main = ET.fromstring(out.stdout)
    section = next(s for s in main.iter("section") if s.get("data-task-type") == TASK)
    [svg] = [e for e in section.iter("svg") if e.get("aria-label") == "Accuracy by model version"]
    assert svg.get("data-yardstick") == EVALSET_V2 and svg.get("data-comparable") == "true"
    bars = {r.get("data-version"): float(r.get("data-accuracy")) for r in svg.iter("rect")}
    assert bars == {"2": 0.78, "3": 0.86, "4": 0.72}
    [pending] = [g for g in svg.iter("g") if g.get("class") == "pending"]
    assert pending.get("data-version") == "1" and pending.find("title").text == "v1: not yet evaluated on v2"
    chart_text = "".join(section.find(".//div[@class='chart']").itertext())
    assert f"on {EVALSET_V2}: every version answered the same questions" in chart_text
    assert "not yet evaluated on v2 (1)" in chart_text
    [table] = [t for t in section.iter("table") if t.get("class") == "yardstick"]
    rows = {tr.get("data-version"): " | ".join("".join(td.itertext()) for td in tr) for tr in table.iter("tr")
            if tr.get("data-version")}  # fmt: skip
    assert "".join(table.find("tr").itertext()).startswith(f"VersionRoleAccuracy on {EVALSET_V2}")
    assert rows["1"].startswith("v1 | previous | not yet evaluated on v2 | own test split")
    assert rows["3"].startswith(f"v3 | canary | 0.860 | {EVALSET_V2} | 0.860 vs 0.780 | "
                                "+0.080, 95 % CI [+0.030, +0.130]")  # fmt: skip
    assert "0.900 vs 0.880 (7 incumbent-written rows excluded)" in rows["3"]
    assert "pattern-1a2b3c4d (12 prompts, references: corrections): fixed 75 % vs champion 25 %" in rows["3"]
    assert "pattern-99aa00bb (5 prompts): no reference" in rows["4"]
    assert "judge-mini: win rate 35 %, net win -0.200 CI [-0.350, -0.050], kappa 0.81" in rows["4"]
    canary = "".join(next(d for d in section.iter("div") if d.get("data-role") == "canary").itertext())
    assert f"0.860 vs 0.780 (champion v2) on {EVALSET_V2}; gain +0.080, 95 % CI [+0.030, +0.130]" in canary
    legacy = next(s for s in main.iter("section") if s.get("data-task-type") == LEGACY)
    [legacy_svg] = [e for e in legacy.iter("svg") if e.get("aria-label") == "Accuracy by model version"]
    assert legacy_svg.get("data-comparable") == "false" and len(list(legacy_svg.iter("rect"))) == 2
    assert f"on {NOT_COMPARABLE} (no eval-set figure yet)" in "".join(legacy.find(".//div[@class='chart']").itertext())
