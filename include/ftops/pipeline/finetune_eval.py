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
from ftops.datasets.evalsets import EvalSets, as_example
from ftops.pipeline.common import (
    check_base_model,
    dataset_registry,
    json_safe,
    mlflow_download,
    served_model_version,
    weights_artifact,
)
from ftops.pipeline.yardstick import yardstick_metrics
from ftops.registry import models as registry
from ftops.registry.upstream import MODEL_TAG as UPSTREAM_MODEL_TAG
from ftops.registry.upstream import UPSTREAM

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import sqlalchemy as sa

    from ftops.evaluation.baselines import TrivialBaseline
    from ftops.evaluation.generate import LoadedModel
    from ftops.evaluation.metrics import EvalResult


log = logging.getLogger(__name__)


def _load_local_model(tags: dict[str, str], weights_uri: str, folder: str) -> LoadedModel | None:
    """The local model a training run's tags describe: the base model plus its trained weights (adapter or
    full model) downloaded from ``weights_uri``, or the untuned base when the URI is empty. None for an API
    model (``backend: openai`` or ``upstream``), which is evaluated through its API."""
    from ftops.evaluation.generate import load_model

    if tags.get("backend") in ("openai", UPSTREAM):
        return None
    base = check_base_model(tags["base_model"])
    return load_model(base, mlflow_download(weights_uri, folder) if weights_uri else None)


def evaluate_versions(
    specs: list[tuple[dict[str, str], str]], test: list[dict[str, Any]], cfg: FtopsConfig, folder: str,
    api_client: Callable[[], Any] | None, *, timed: bool = True, connect: Callable[[str], Any] | None = None,
) -> list[EvalResult]:
    """Evaluate models given as (training run tags, weights URI) on the same test rows.

    An API model is asked through chat completions (``openai.fine_tuned_model``, or its base model when
    untuned); an upstream version through the client ``connect`` makes for its connection id, its calls priced
    with its tags' token prices (``cost_per_1k_calls``). When every model is local, single-request latency is timed with all of them loaded,
    interleaved prompt by prompt (:func:`ftops.evaluation.time_single_requests`), so a load spike on the
    machine cannot favour one of them; ``timed=False`` leaves latency unmeasured (NaN).
    """
    from ftops.evaluation.evaluate import evaluate
    from ftops.evaluation.generate import LATENCY_SAMPLE, time_single_requests

    loaded = [_load_local_model(tags, uri, f"{folder}/{i}") for i, (tags, uri) in enumerate(specs)]
    local = [m for m in loaded if m is not None]
    together = len(local) == len(loaded) > 1
    results = []
    for (tags, _), model in zip(specs, loaded, strict=True):
        if model is None and tags.get("backend") == UPSTREAM:
            results.append(_evaluate_upstream(tags, test, connect))
        elif model is None:
            from ftops.evaluation.api_model import evaluate_api_model
            from ftops.pipeline.finetune_api import MODEL_TAG

            if api_client is None:
                raise ValueError("an API model is to be evaluated but no API connection was given")
            results.append(evaluate_api_model(api_client(), tags.get(MODEL_TAG) or tags["base_model"], test))
        else:
            sample = LATENCY_SAMPLE if timed and not together else 0
            results.append(evaluate(model, test, cost_per_hour=cfg.gate.compute_cost_per_hour, latency_sample=sample))
    if together and timed:
        for result, latency in zip(results, time_single_requests(local, test), strict=True):
            result.metrics.update(latency)
    return results


def _evaluate_upstream(tags: dict[str, str], test: list[dict[str, Any]], connect: Callable[[str], Any] | None) -> EvalResult:
    from ftops.evaluation.api_model import evaluate_api_model
    from ftops.registry.upstream import CONNECTION_TAG, prices_of
    from ftops.serving.backends import connection_client

    prices = prices_of(tags)
    client = (connect or connection_client)(tags[CONNECTION_TAG])
    return evaluate_api_model(client, tags[UPSTREAM_MODEL_TAG], test, price=prices.cost if prices else None)


def version_spec(mv: Any) -> tuple[dict[str, str], str]:
    """(training run tags with the version's tags over them, weights URI) of a registered model version."""
    run = registry.client().get_run(str(mv.run_id))
    tags = {**run.data.tags, **mv.tags}
    return tags, f"{run.info.artifact_uri}/{weights_artifact(tags)}"


def evaluate_candidate(
    cfg: FtopsConfig,
    task_type: str,
    run_id: str,
    *,
    api_client: Callable[[], Any] | None = None,
    connect: Callable[[str], Any] | None = None,
    judge_client: Callable[[], Any] | None = None,
    engine: sa.Engine | None = None,
    decision_key: str | None = None,
) -> dict[str, Any]:
    """Evaluate candidate and baseline (champion, or the base model) on the yardstick; apply the gate.

    The yardstick is the task type's latest eval set (:mod:`ftops.datasets.evalsets`: frozen, references no
    served model wrote) when it has one; otherwise the dataset version's test split without the rows whose
    reference the incumbent itself served (a champion scores 100 % on its own answers). With an eval set the
    split figure (without those rows) is measured too and reported beside it. Both models answer the same
    rows in the same order, so the accuracy gain gets a paired bootstrap confidence interval
    (``cfg.gate.confidence``, ``cfg.gate.bootstrap_resamples``, fixed seed: a retry reaches the same decision
    on the same answers). The candidate's MLflow run gets the metrics (``candidate_*``, ``baseline_*``,
    ``accuracy_gain`` and its CI bounds, ``evalset_*``, ``split_*``) and ``evaluation/report.json``,
    ``evaluation/report.md`` and ``evaluation/outputs.jsonl`` (every yardstick row's prompt, reference, both
    answers and whether each was right). Retry-safe (evaluation has no side effect but the run's metrics and
    report, which are overwritten).

    A fine-tune that the governor started for an error pattern (``decision_key`` of its decision, ``engine``
    the warehouse) is also measured on that failure cluster (:mod:`ftops.pipeline.slices`): both models'
    fixed rates go into the report, the gate's reasons and the version's tags. For a task type with
    ``metric: judge`` the LLM judge (``judge_client``: an ``openai.OpenAI`` for ``evaluation.judge``) compares
    the two models' answers to the yardstick and decides quality (:func:`ftops.pipeline.judge.judge_gate`).

    Returns:
        The report (small enough for XCom): metrics of both, the gain's CI, the yardstick, the split figure
        and the gate decision.
    """
    import mlflow

    from ftops.deployment.gate import TrivialComparison, apply_gate
    from ftops.evaluation.baselines import best_trivial, trivial_baselines
    from ftops.evaluation.metrics import paired_bootstrap
    from ftops.pipeline.finetune import use_threads

    use_threads(cfg)
    c = registry.client()
    run = c.get_run(run_id)
    datasets = dataset_registry(cfg)
    version = datasets.get(task_type, run.data.tags["dataset_version"])
    tags = run.data.tags
    champion = registry.alias_version(task_type, registry.CHAMPION)
    split_rows, excluded = split_without_incumbent(
        datasets.read(version, "test"), datasets.read_metadata(version),
        served_model_version(task_type, str(champion.version)) if champion is not None else None,
    )  # fmt: skip
    evalset = EvalSets(datasets).latest(task_type)
    test = [as_example(r) for r in EvalSets(datasets).read(evalset)] if evalset else split_rows
    if not test:
        raise ValueError(f"{version.tag} has no test row that the incumbent did not write ({excluded} excluded): "
                         "import an eval set (ftops evalset import) or curate more traffic")  # fmt: skip
    trivials = trivial_baselines(datasets.read(version, "train"), test)
    replacing = None
    if champion is not None:
        baseline_name = f"champion v{champion.version}"
        baseline_spec = version_spec(champion)
        if baseline_spec[0].get("backend") == UPSTREAM:  # the replacement gate (deployment.gate)
            replacing = baseline_spec[0][UPSTREAM_MODEL_TAG]
            baseline_name += f" (upstream {replacing})"
    else:
        baseline_name = f"base model {tags['base_model']}"
        baseline_spec = ({"backend": tags["backend"], "base_model": tags["base_model"]}, "")  # untuned
    candidate_spec = (tags, f"{run.info.artifact_uri}/{weights_artifact(tags)}")
    with tempfile.TemporaryDirectory() as tmp:
        candidate, baseline = evaluate_versions([candidate_spec, baseline_spec], test, cfg, tmp, api_client,
                                                connect=connect)  # fmt: skip
        split_figures: list[EvalResult] | None = [candidate, baseline]
        if evalset is not None:  # the split figure beside the yardstick's
            split_figures = evaluate_versions([candidate_spec, baseline_spec], split_rows, cfg, f"{tmp}/split",
                                              api_client, timed=False, connect=connect) if split_rows else None  # fmt: skip
        failure_slice = _failure_slice(cfg, task_type, engine, decision_key, [candidate_spec, baseline_spec],
                                       f"{tmp}/slice", api_client, connect)  # fmt: skip
    judged = None
    if cfg.evaluation.metric(task_type) == "judge":
        from ftops.pipeline.judge import judge_gate

        if judge_client is None:
            raise ValueError(f"{task_type} is judged (evaluation.metrics) but no judge connection was given")
        prompts, references = zip(*examples_of(test), strict=True) if test else ((), ())
        judged = judge_gate(cfg, task_type, judge_client(), list(prompts), candidate.outputs, baseline.outputs,
                            list(references), margin=cfg.gate.replace_margin if replacing else 0.0)  # fmt: skip
    ci = paired_bootstrap(candidate.correct, baseline.correct, resamples=cfg.gate.bootstrap_resamples,
                          confidence=cfg.gate.confidence, seed=0)  # fmt: skip
    trivial = best_trivial(trivials)
    versus_trivial = None
    if trivial is not None:
        trivial_ci = paired_bootstrap(candidate.correct, trivial.correct, resamples=cfg.gate.bootstrap_resamples,
                                      confidence=cfg.gate.confidence, seed=0)  # fmt: skip
        versus_trivial = TrivialComparison(f"{trivial.name} {_quoted(trivial.answer)}", trivial.accuracy, trivial_ci)
    measured_on = (f"{evalset.tag} ({len(test)} rows, references no served model wrote)" if evalset else
                   f"{version.tag} test split without the {excluded} rows the incumbent wrote ({len(test)} rows; "
                   "no eval set: ftops evalset import)")  # fmt: skip
    gate = apply_gate(candidate.metrics, baseline.metrics, cfg.gate, ci, trivial=versus_trivial,
                      failure_slice=failure_slice, judged=judged.reasons if judged else None,
                      yardstick=measured_on, replacing=replacing)  # fmt: skip
    accuracy_gain = _gain(ci, cfg)
    yardstick = {"tag": evalset.tag if evalset else "none", "version": evalset.version if evalset else None,
                 "n": len(test), "accuracy": candidate.metrics["accuracy"],
                 "accuracy_baseline": baseline.metrics["accuracy"], "gain_ci": [ci[1], ci[2]]}  # fmt: skip
    split = {"n": len(split_rows), "excluded_incumbent_rows": excluded,
             "accuracy": split_figures[0].metrics["accuracy"] if split_figures else None,
             "accuracy_baseline": split_figures[1].metrics["accuracy"] if split_figures else None}  # fmt: skip
    report = {
        "task_type": task_type, "dataset_version": version.tag, "baseline": baseline_name, "replacing": replacing,
        "champion_version": str(champion.version) if champion is not None else None,
        "candidate_metrics": candidate.metrics, "baseline_metrics": baseline.metrics,
        "accuracy_gain": accuracy_gain, "gate": gate.as_dict(), "yardstick": yardstick, "split": split,
        "trivial_baselines": [t.as_dict() for t in trivials],
        "accuracy_gain_over_trivial": _gain(versus_trivial.gain_ci, cfg) if versus_trivial else None,
        "distinct_candidate_answers": len(set(candidate.outputs)),
        "slice": failure_slice, "judge": {"tags": judged.tags, "metrics": judged.metrics} if judged else None,
    }  # fmt: skip
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"candidate_{k}": float(v) for k, v in candidate.metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": float(v) for k, v in baseline.metrics.items()})
        mlflow.log_metrics({"accuracy_gain": ci[0], "accuracy_gain_ci_low": ci[1], "accuracy_gain_ci_high": ci[2]})
        mlflow.log_metrics({k: float(v) for k, v in yardstick_metrics(report).items()})
        if failure_slice is not None:
            from ftops.evaluation.slices import slice_metrics

            mlflow.log_metrics(slice_metrics(failure_slice))
        if judged is not None:
            mlflow.log_metrics(judged.metrics)
        if trivial is not None and versus_trivial is not None:
            mlflow.log_metrics({"trivial_accuracy": trivial.accuracy, "accuracy_gain_over_trivial_ci_low":
                                versus_trivial.gain_ci[1]})  # fmt: skip
        mlflow.set_tag("ftops.evalset", yardstick["tag"])
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
    log.info("The candidate gave %d distinct answers to %d test prompts of the yardstick (%d right); the answers "
             "are in the run's %s", len(set(candidate.outputs)), len(test), sum(candidate.correct),
             "evaluation/outputs.jsonl")  # fmt: skip
    if cfg.gate.log_examples:  # off by default: prompts in task logs are copies that erasure cannot reach
        log.info("First %d answers (scrubbed, cut):\n%s", min(cfg.gate.log_examples, len(test)), "\n".join(
            f"  {_cut(p)!r} -> {_cut(a)!r} (reference {_cut(r)!r})" for (p, r), a in
            list(zip(examples_of(test), candidate.outputs, strict=True))[:cfg.gate.log_examples]))  # fmt: skip
    return json_safe(report)


def _failure_slice(
    cfg: FtopsConfig, task_type: str, engine: sa.Engine | None, decision_key: str | None,
    specs: list[tuple[dict[str, str], str]], folder: str, api_client: Callable[[], Any] | None,
    connect: Callable[[str], Any] | None = None,
) -> dict[str, str] | None:
    """The failure-slice report (tags: ids and figures, no text) of a fine-tune started for an error pattern."""
    from ftops.evaluation.slices import slice_report
    from ftops.pipeline.slices import slice_for_run
    from ftops.warehouse.teacher_store import TeacherStore

    if engine is None or not decision_key:
        return None
    teacher = TeacherStore(engine, cfg.interactions_table)  # the teacher's checked answers where none corrected
    found = slice_for_run(engine, cfg, task_type, decision_key, teacher=teacher)
    if found is None:
        return None
    if not found.rows:  # no reference for any prompt of the cluster: reported as such
        return slice_report(found, [], [])
    candidate, champion = evaluate_versions(specs, found.rows, cfg, folder, api_client, timed=False, connect=connect)
    return slice_report(found, candidate.correct, champion.correct)


def split_without_incumbent(
    test: list[dict[str, Any]], metadata: dict[str, Any], incumbent: str | None
) -> tuple[list[dict[str, Any]], int]:
    """The test rows whose reference the incumbent did not serve, and how many were left out.

    ``metadata["served_by"]["test"]`` names, row by row, the model version whose answer became the reference
    (``ftops-<task_type>/<version>``, or None for rows logged without one). A version curated before that
    record existed has none: every row is kept (the incumbent's own answers then inflate its figure).
    """
    served_by = (metadata.get("served_by") or {}).get("test")
    if incumbent is None or not isinstance(served_by, list) or len(served_by) != len(test):
        return test, 0
    kept = [row for row, by in zip(test, served_by, strict=True) if by != incumbent]
    return kept, len(test) - len(kept)


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
