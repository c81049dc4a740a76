"""The ``ftops_finetune`` evaluation step: candidate and baseline on the same test split, the gate applied,
the report logged to the candidate's MLflow run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig
from ftops.core.text import printable
from ftops.curation.curate import examples_of
from ftops.pipeline.common import check_base_model, dataset_registry, json_safe, mlflow_download, weights_artifact
from ftops.registry import models as registry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ftops.evaluation.baselines import TrivialBaseline
    from ftops.evaluation.generate import LoadedModel
    from ftops.evaluation.metrics import EvalResult


log = logging.getLogger(__name__)


def _load_local_model(tags: dict[str, str], weights_uri: str, folder: str) -> LoadedModel | None:
    """The local model a training run's tags describe: the base model plus its trained weights (adapter or
    full model) downloaded from ``weights_uri``, or the untuned base when the URI is empty. None for an API
    model (``backend: openai``), which is evaluated through the API."""
    from ftops.evaluation.generate import load_model

    if tags.get("backend") == "openai":
        return None
    base = check_base_model(tags["base_model"])
    return load_model(base, mlflow_download(weights_uri, folder) if weights_uri else None)


def _evaluate_models(
    specs: list[tuple[dict[str, str], str]], test: list[dict[str, Any]], cfg: FtopsConfig, folder: str,
    api_client: Callable[[], Any] | None,
) -> list[EvalResult]:
    """Evaluate models given as (training run tags, weights URI) on the same test rows.

    An API model is asked through chat completions (``openai.fine_tuned_model``, or its base model when
    untuned). When every model is local, single-request latency is timed with all of them loaded,
    interleaved prompt by prompt (:func:`ftops.evaluation.time_single_requests`), so a load spike on the
    machine cannot favour one of them.
    """
    from ftops.evaluation.evaluate import evaluate
    from ftops.evaluation.generate import LATENCY_SAMPLE, time_single_requests

    loaded = [_load_local_model(tags, uri, f"{folder}/{i}") for i, (tags, uri) in enumerate(specs)]
    local = [m for m in loaded if m is not None]
    together = len(local) == len(loaded) > 1
    results = []
    for (tags, _), model in zip(specs, loaded, strict=True):
        if model is None:
            from ftops.evaluation.api_model import evaluate_api_model
            from ftops.pipeline.finetune_api import MODEL_TAG

            if api_client is None:
                raise ValueError("an API model is to be evaluated but no API connection was given")
            results.append(evaluate_api_model(api_client(), tags.get(MODEL_TAG) or tags["base_model"], test))
        else:
            results.append(evaluate(model, test, cost_per_hour=cfg.gate.compute_cost_per_hour,
                                    latency_sample=0 if together else LATENCY_SAMPLE))  # fmt: skip
    if together:
        for result, latency in zip(results, time_single_requests(local, test), strict=True):
            result.metrics.update(latency)
    return results


def evaluate_candidate(
    cfg: FtopsConfig, task_type: str, run_id: str, *, api_client: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Evaluate candidate and baseline (champion, or the base model) on the test split; apply the gate.

    Both models answer the same test examples in the same order, so the accuracy gain gets a paired
    bootstrap confidence interval (``cfg.gate.confidence``, ``cfg.gate.bootstrap_resamples``, fixed seed:
    a retry reaches the same decision on the same answers). The candidate's MLflow run gets the metrics
    (``candidate_*``, ``baseline_*``, ``accuracy_gain`` and its CI bounds) and ``evaluation/report.json``,
    ``evaluation/report.md`` and ``evaluation/outputs.jsonl`` (every example's prompt, reference, both
    answers and whether each was right). Retry-safe (evaluation has no side effect but the run's metrics
    and report, which are overwritten).

    Returns:
        The report (small enough for XCom): metrics of both, the gain's CI and the gate decision.
    """
    import mlflow

    from ftops.deployment.gate import TrivialComparison, apply_gate
    from ftops.evaluation.baselines import best_trivial, trivial_baselines
    from ftops.evaluation.metrics import paired_bootstrap

    c = registry.client()
    run = c.get_run(run_id)
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, run.data.tags["dataset_version"])
    test = datasets.read(version, "test")
    trivials = trivial_baselines(datasets.read(version, "train"), test)
    tags = run.data.tags
    champion = registry.alias_version(task_type, registry.CHAMPION)
    if champion is not None:
        baseline_name = f"champion v{champion.version}"
        champ_run = c.get_run(str(champion.run_id))
        champ_tags = {**champ_run.data.tags, **champion.tags}
        baseline_spec = (champ_tags, f"{champ_run.info.artifact_uri}/{weights_artifact(champ_tags)}")
    else:
        baseline_name = f"base model {tags['base_model']}"
        baseline_spec = ({"backend": tags["backend"], "base_model": tags["base_model"]}, "")  # untuned
    with tempfile.TemporaryDirectory() as tmp:
        candidate_spec = (tags, f"{run.info.artifact_uri}/{weights_artifact(tags)}")
        candidate, baseline = _evaluate_models([candidate_spec, baseline_spec], test, cfg, tmp, api_client)
    ci = paired_bootstrap(candidate.correct, baseline.correct, resamples=cfg.gate.bootstrap_resamples,
                          confidence=cfg.gate.confidence, seed=0)  # fmt: skip
    trivial = best_trivial(trivials)
    versus_trivial = None
    if trivial is not None:
        trivial_ci = paired_bootstrap(candidate.correct, trivial.correct, resamples=cfg.gate.bootstrap_resamples,
                                      confidence=cfg.gate.confidence, seed=0)  # fmt: skip
        versus_trivial = TrivialComparison(f"{trivial.name} {_quoted(trivial.answer)}", trivial.accuracy, trivial_ci)
    gate = apply_gate(candidate.metrics, baseline.metrics, cfg.gate, ci, trivial=versus_trivial)
    accuracy_gain = _gain(ci, cfg)
    report = {
        "task_type": task_type, "dataset_version": version.tag, "baseline": baseline_name,
        "candidate_metrics": candidate.metrics, "baseline_metrics": baseline.metrics,
        "accuracy_gain": accuracy_gain, "gate": gate.as_dict(),
        "trivial_baselines": [t.as_dict() for t in trivials],
        "accuracy_gain_over_trivial": _gain(versus_trivial.gain_ci, cfg) if versus_trivial else None,
        "distinct_candidate_answers": len(set(candidate.outputs)),
    }  # fmt: skip
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"candidate_{k}": float(v) for k, v in candidate.metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": float(v) for k, v in baseline.metrics.items()})
        mlflow.log_metrics({"accuracy_gain": ci[0], "accuracy_gain_ci_low": ci[1], "accuracy_gain_ci_high": ci[2]})
        if trivial is not None and versus_trivial is not None:
            mlflow.log_metrics({"trivial_accuracy": trivial.accuracy, "accuracy_gain_over_trivial_ci_low":
                                versus_trivial.gain_ci[1]})  # fmt: skip
        mlflow.log_dict(report, "evaluation/report.json")
        mlflow.log_text(_markdown_table(candidate.metrics, baseline.metrics, baseline_name, accuracy_gain,
                                        gate.reasons, trivials), "evaluation/report.md")  # fmt: skip
        outputs = [
            {"prompt": p, "reference": r, "candidate": co, "baseline": bo, "candidate_correct": cc,
             "baseline_correct": bc}
            for (p, r), co, bo, cc, bc in zip(examples_of(test), candidate.outputs, baseline.outputs,
                                              candidate.correct, baseline.correct, strict=True)
        ]  # fmt: skip
        mlflow.log_text("".join(json.dumps(o) + "\n" for o in outputs), "evaluation/outputs.jsonl")
    log.info("Gate for %s run %s: %s\n%s", task_type, run_id, gate.decision.upper(), "\n".join(gate.reasons))
    log.info("The candidate gave %d distinct answers to %d test prompts (%d right); the answers are in the run's "
             "%s", len(set(candidate.outputs)), len(test), sum(candidate.correct), "evaluation/outputs.jsonl")  # fmt: skip
    if cfg.gate.log_examples:  # off by default: prompts in task logs are copies that erasure cannot reach
        log.info("First %d answers (scrubbed, cut):\n%s", min(cfg.gate.log_examples, len(test)), "\n".join(
            f"  {_cut(p)!r} -> {_cut(a)!r} (reference {_cut(r)!r})" for (p, r), a in
            list(zip(examples_of(test), candidate.outputs, strict=True))[:cfg.gate.log_examples]))  # fmt: skip
    return json_safe(report)


def _cut(text: str, limit: int = 60) -> str:
    from ftops.curation.scrub import scrub

    return printable(scrub(text).text, keep_breaks=False)[:limit]




def _quoted(answer: str, limit: int = 40) -> str:
    return '"' + (answer if len(answer) <= limit else answer[: limit - 1] + "…") + '"'


def _gain(ci: tuple[float, float, float], cfg: FtopsConfig) -> dict[str, Any]:
    return {"diff": ci[0], "low": ci[1], "high": ci[2], "confidence": cfg.gate.confidence,
            "resamples": cfg.gate.bootstrap_resamples, "method": "paired bootstrap, percentile"}  # fmt: skip


def _markdown_table(
    candidate: dict[str, float],
    baseline: dict[str, float],
    baseline_name: str,
    accuracy_gain: dict[str, Any] | None = None,
    reasons: list[str] | None = None,
    trivials: Sequence[TrivialBaseline] = (),
) -> str:
    lines = [f"| metric | candidate | {baseline_name} | difference |", "|---|---|---|---|"]
    for k in candidate:
        other = baseline.get(k, float("nan"))
        lines.append(f"| {k} | {candidate[k]:.4g} | {other:.4g} | {candidate[k] - other:+.4g} |")
    if accuracy_gain is not None:
        g = accuracy_gain
        lines.append(f"| accuracy gain, {g['confidence']:.0%} CI ({g['method']}, {g['resamples']} resamples) "
                     f"| | | {g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] |")  # fmt: skip
    for t in trivials:
        lines.append(f"| accuracy of the trivial baseline: {t.name} {_quoted(t.answer)} | | {t.accuracy:.4g} | |")
    if reasons:
        lines += ["", "Gate:", ""] + [f"- {r}" for r in reasons]
    return "\n".join(lines) + "\n"
