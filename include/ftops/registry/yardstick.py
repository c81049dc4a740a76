"""What each accuracy of a registered version was measured on: its tags read as one "yardstick" dict.

A dataset version's test split is re-selected every version, so "accuracy by version" from each version's own
split compares numbers measured on different sets. The gate therefore records (issue 20's contract) on every
version it registers:

* ``ftops.evalset``: the yardstick of its decision, an eval-set tag (``evalset/<task_type>/v<N>``) or ``none``
  (no eval set: the dataset's test split without the rows whose reference the incumbent wrote);
* ``metric.evalset_accuracy``, ``metric.evalset_accuracy_champion``, ``metric.evalset_gain_ci_low`` and
  ``_high``; ``metric.split_accuracy``, ``metric.split_accuracy_champion``, ``split.excluded_incumbent_rows``;
* ``evalset_accuracy.v<N>``: the like-for-like record, one tag per eval-set version the model version answered
  (the gate sets it for candidate and champion, the re-evaluation task for older versions);
* a failure slice (``slice.*``, ``metric.slice_fixed_rate`` and ``_champion``) and the LLM judge's figures
  (``judge.*``, ``metric.judge_*``) when the gate measured them.

Versions registered before any of this carry only ``metric.accuracy`` against ``baseline.accuracy``: their own
test split, shown as such and never as comparable. :func:`yardstick` is the one reader of these tags and
:func:`accuracy_by_version` puts a task type's versions on one yardstick; ``ftops summary``, ``ftops status``,
the FT-Ops page and ``explain_model`` all show what they return. Plain functions of tags: no store is read here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

GATE_EVALSET = "ftops.evalset"
NO_EVALSET = "none"
LIKE_FOR_LIKE = "evalset_accuracy.v"  # + the eval-set version number
OWN_SPLIT = "own test split"
SPLIT_WITHOUT_INCUMBENT = "test split without incumbent rows"
NOT_COMPARABLE = "each version's own test split: not comparable across versions"
_EVALSET_TAG = re.compile(r"^evalset/(?P<task_type>[A-Za-z0-9_-]+)/v(?P<n>[1-9][0-9]*)$")
_LIKE_FOR_LIKE = re.compile(rf"^{re.escape(LIKE_FOR_LIKE)}(?P<n>[1-9][0-9]*)$")


def evalset_tag(task_type: str, version: int) -> str:
    """The git tag of eval-set version ``version`` of a task type: ``evalset/<task_type>/v<N>``."""
    return f"evalset/{task_type}/v{version}"


def evalset_number(tag: str | None) -> int | None:
    """``N`` of an eval-set tag ``evalset/<task_type>/v<N>``; None for anything else (``none``, junk)."""
    match = _EVALSET_TAG.match(tag or "")
    return int(match["n"]) if match else None


def yardstick(tags: Mapping[str, str], *, run_metrics: Mapping[str, float] | None = None,
              confidence: float | None = None) -> dict[str, Any]:  # fmt: skip
    """A version's figures, each with the set it was measured on.

    Args:
        tags: The version's MLflow tags.
        run_metrics: Its training run's metrics, when the caller has read them: the gain's CI of a gate that
            did not decide on an eval set is only there (``accuracy_gain_ci_low`` / ``_high``).
        confidence: The gate's CI level (``gate.confidence``), shown with the CI.

    Returns:
        ``gate``: the yardstick of its gate decision (``yardstick``: the eval-set tag, the split without
        incumbent rows or its own test split; ``kind``: ``evalset`` | ``split`` | ``own_split``; ``comparable``;
        ``accuracy`` against ``against_accuracy`` of ``against``, ``gain`` and ``gain_ci``);
        ``evalset_accuracy``: ``{"v<N>": accuracy}`` on every eval-set version it answered; ``split``: the test
        split figures without incumbent rows (or None); ``own_split``: the legacy figure on its own test split
        (or None); ``slice`` and ``judge`` (or None).
    """
    t = dict(tags)
    metrics = dict(run_metrics or {})
    gate_tag = t.get(GATE_EVALSET)
    if gate_tag and gate_tag != NO_EVALSET:
        kind, label = "evalset", gate_tag
        accuracy, against = _num(t, "metric.evalset_accuracy"), _num(t, "metric.evalset_accuracy_champion")
        ci = _ci(_num(t, "metric.evalset_gain_ci_low"), _num(t, "metric.evalset_gain_ci_high"), confidence)
    else:
        # no eval set: the gate's CI is the one it logs on its run (issue 20 names no tag for it)
        ci = _ci(_float(metrics.get("accuracy_gain_ci_low")), _float(metrics.get("accuracy_gain_ci_high")), confidence)
        if gate_tag == NO_EVALSET:
            kind, label = "split", SPLIT_WITHOUT_INCUMBENT
            accuracy, against = _num(t, "metric.split_accuracy"), _num(t, "metric.split_accuracy_champion")
        else:
            kind, label = "own_split", OWN_SPLIT
            accuracy, against = _num(t, "metric.accuracy"), _num(t, "baseline.accuracy")
    gain = None if accuracy is None or against is None else round(accuracy - against, 4)
    figures = like_for_like(t)
    gate_n = evalset_number(gate_tag)
    if gate_n is not None and gate_n not in figures and accuracy is not None:
        figures[gate_n] = accuracy  # the gate's own figure is the like-for-like one of that eval-set version
    split = None
    if "metric.split_accuracy" in t:
        split = {"accuracy": _num(t, "metric.split_accuracy"),
                 "champion_accuracy": _num(t, "metric.split_accuracy_champion"),
                 "excluded_incumbent_rows": _int(t.get("split.excluded_incumbent_rows"))}  # fmt: skip
    own = None
    if "metric.accuracy" in t:
        own = {"accuracy": _num(t, "metric.accuracy"), "baseline_accuracy": _num(t, "baseline.accuracy")}
    return {
        "gate": {"yardstick": label, "kind": kind, "comparable": kind == "evalset", "accuracy": accuracy,
                 "against": t.get("baseline"), "against_accuracy": against, "gain": gain, "gain_ci": ci},
        "evalset_accuracy": {f"v{n}": figures[n] for n in sorted(figures)},
        "split": split,
        "own_split": own,
        "slice": _slice(t),
        "judge": _judge(t),
    }  # fmt: skip


def accuracy_by_version(task_type: str, versions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Every version of a task type on one yardstick: the latest eval-set version any of them was evaluated on.

    Versions without a figure on it are listed with the note "not yet evaluated on v<N>" (the re-evaluation
    task fills them). When no version has an eval-set figure at all, the versions' own test-split figures
    are returned instead, marked as not comparable across versions.

    Args:
        task_type: The task type.
        versions: version number (a string) -> its :func:`yardstick` dict.

    Returns:
        ``yardstick`` (the eval-set tag, ``own test split``, or None without versions), ``evalset_version``
        (N or None), ``comparable``, ``title`` (for a chart or a table), ``column`` (a table's header of the
        accuracy) and ``points``, oldest version first: ``{version, accuracy, yardstick, note}`` (``accuracy``
        None with a ``note`` when there is none).
    """
    order = sorted(versions, key=lambda v: (int(v) if v.isdigit() else math.inf, v))
    latest = max((int(k[1:]) for y in versions.values() for k in y["evalset_accuracy"]), default=None)
    points = []
    if latest is not None:
        tag = evalset_tag(task_type, latest)
        for v in order:
            value = versions[v]["evalset_accuracy"].get(f"v{latest}")
            points.append({"version": v, "accuracy": value, "yardstick": tag if value is not None else None,
                           "note": None if value is not None else f"not yet evaluated on v{latest}"})  # fmt: skip
        return {"task_type": task_type, "yardstick": tag, "evalset_version": latest, "comparable": True,
                "title": f"accuracy on {tag}", "column": f"accuracy on {tag}", "points": points}  # fmt: skip
    for v in order:
        y = versions[v]
        own, split = y["own_split"] or {}, y["split"] or {}
        if own.get("accuracy") is not None:
            point = {"accuracy": own["accuracy"], "yardstick": OWN_SPLIT, "note": None}
        elif split.get("accuracy") is not None:
            point = {"accuracy": split["accuracy"], "yardstick": SPLIT_WITHOUT_INCUMBENT, "note": None}
        else:
            point = {"accuracy": None, "yardstick": None, "note": "no accuracy recorded"}
        points.append({"version": v, **point})
    return {"task_type": task_type, "yardstick": OWN_SPLIT if points else None, "evalset_version": None,
            "comparable": False, "title": f"accuracy on {NOT_COMPARABLE}", "column": f"accuracy on {OWN_SPLIT}",
            "points": points}  # fmt: skip


def like_for_like(tags: Mapping[str, str]) -> dict[int, float]:
    """A model version's recorded accuracy per eval-set version (tags ``evalset_accuracy.v<N>``): ``{N: accuracy}``."""
    out = {}
    for key, value in tags.items():
        match = _LIKE_FOR_LIKE.match(key)
        number = _float(value) if match else None
        if match and number is not None:
            out[int(match["n"])] = number
    return out


def _slice(t: Mapping[str, str]) -> dict[str, Any] | None:
    if "slice.pattern" not in t:
        return None
    reference = t.get("slice.reference") or NO_EVALSET
    has_reference = reference != NO_EVALSET
    return {"pattern": t["slice.pattern"], "size": _int(t.get("slice.size")), "reference": reference,
            "has_reference": has_reference,
            "fixed_rate": _num(t, "metric.slice_fixed_rate") if has_reference else None,
            "fixed_rate_champion": _num(t, "metric.slice_fixed_rate_champion") if has_reference else None}  # fmt: skip


def _judge(t: Mapping[str, str]) -> dict[str, Any] | None:
    if "judge.model" not in t and "metric.judge_win_rate" not in t:
        return None
    return {"model": t.get("judge.model"), "win_rate": _num(t, "metric.judge_win_rate"),
            "net_win": _num(t, "metric.judge_net_win"),
            "net_win_ci": _ci(_num(t, "metric.judge_net_win_ci_low"), _num(t, "metric.judge_net_win_ci_high"), None),
            "calls": _int(t.get("metric.judge_calls")), "cost": _num(t, "metric.judge_cost"),
            "kappa": _num(t, "judge.kappa")}  # fmt: skip  # kappa "none": the gate relied on no calibration


def _ci(low: float | None, high: float | None, confidence: float | None) -> dict[str, Any] | None:
    if low is None or high is None:
        return None
    return {"low": low, "high": high, "confidence": confidence}


def _num(tags: Mapping[str, str], key: str) -> float | None:
    return _float(tags.get(key))


def _float(value: Any) -> float | None:
    try:
        number = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return number if number is None or math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)
