"""The gate's yardstick as recorded: flat metrics for the training run, tags for the model version (the tag names
and their reader are :mod:`ftops.registry.yardstick`)."""

from __future__ import annotations

from typing import Any

from ftops.registry.yardstick import GATE_EVALSET, LIKE_FOR_LIKE, NO_EVALSET


def evalset_figure_tag(evalset_version: int) -> str:
    """The version tag holding a model version's accuracy on eval-set version ``evalset_version``
    (read back by :mod:`ftops.registry.yardstick`)."""
    return f"{LIKE_FOR_LIKE}{int(evalset_version)}"


def yardstick_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The gate's yardstick figures as flat metrics (``evalset_*`` only when an eval set was the yardstick)."""
    y, split = report["yardstick"], report["split"]
    out: dict[str, float] = {}
    if y["tag"] != NO_EVALSET:
        out |= {"evalset_accuracy": y["accuracy"], "evalset_gain_ci_low": y["gain_ci"][0],
                "evalset_gain_ci_high": y["gain_ci"][1]}  # fmt: skip
        if report.get("champion_version") is not None:
            out["evalset_accuracy_champion"] = y["accuracy_baseline"]
    if split["accuracy"] is not None:
        out["split_accuracy"] = split["accuracy"]
        if report.get("champion_version") is not None:
            out["split_accuracy_champion"] = split["accuracy_baseline"]
    return out


def yardstick_tags(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The gate's yardstick as model-version tags: ``ftops.evalset``, ``metric.evalset_*``, ``metric.split_*``,
    ``split.excluded_incumbent_rows`` and the like-for-like figure ``evalset_accuracy.v<N>``."""
    yardstick = evaluation.get("yardstick")
    if not yardstick:  # a report from before the yardstick
        return {}
    tags: dict[str, Any] = {GATE_EVALSET: yardstick["tag"],
                            "split.excluded_incumbent_rows": int(evaluation["split"]["excluded_incumbent_rows"])}  # fmt: skip
    tags |= {f"metric.{k}": round(float(v), 4) for k, v in yardstick_metrics(evaluation).items()}
    if yardstick.get("version") is not None:
        tags[evalset_figure_tag(yardstick["version"])] = round(float(yardstick["accuracy"]), 4)
    return tags
