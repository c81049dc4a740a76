"""The LLM judge in the pipeline: calibrate it on a task type's eval set, and judge a candidate for the gate.

``ftops judge calibrate --task-type T`` calls :func:`calibrate_judge`; the fine-tune DAG's evaluation calls
:func:`judge_gate` for task types with ``evaluation.metrics: {T: judge}``. The judge's client comes from the
caller (the DAG: the Airflow connection ``evaluation.judge.conn_id``; the CLI: ``$AIRFLOW_CONN_<CONN_ID>``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftops.core.config import FtopsConfig

if TYPE_CHECKING:
    import openai

    from ftops.evaluation.judge import JudgeResult
    from ftops.evaluation.judge_calibration import JudgeCalibration


log = logging.getLogger(__name__)


def calibrate_judge(cfg: FtopsConfig, task_type: str, client: openai.OpenAI) -> JudgeCalibration:
    """Calibrate the configured judge on the latest eval set of a task type and record it on ``ftops-<task_type>``.

    Raises:
        LookupError: The task type has no eval set.
        ValueError: The eval set has too few labelled rows or references to pair.
        JudgeBudgetError: The calibration needs more than ``evaluation.judge.max_calls`` calls.
    """
    from ftops.datasets.evalsets import EvalSets
    from ftops.evaluation.judge_calibration import calibrate, record_calibration
    from ftops.pipeline.common import dataset_registry

    evalsets = EvalSets(dataset_registry(cfg))
    version = evalsets.latest(task_type)
    if version is None:
        raise LookupError(f"no eval set for {task_type}: import one with "
                          f"`ftops evalset import FILE.jsonl --task-type {task_type}`, then calibrate")  # fmt: skip
    result = calibrate(client, cfg.evaluation.judge, evalsets.read(version), evalset=version.tag, task_type=task_type)
    record_calibration(task_type, result)
    return result


def calibrate_from_env(cfg: FtopsConfig, task_type: str) -> tuple[int, str]:
    """``ftops judge calibrate``: :func:`calibrate_judge` with the judge's API from ``$AIRFLOW_CONN_<CONN_ID>``.

    Returns:
        The exit code (0: the gate may rely on the judge; 1: calibrated, but below ``min_kappa``; 2: not
        calibrated, and why) and the report (no prompt or key in it).
    """
    from ftops.core.openai_api import connection_from_env, make_client
    from ftops.evaluation.judge import JudgeBudgetError

    jc = cfg.evaluation.judge
    try:
        client = make_client(**connection_from_env(jc.conn_id), max_retries=jc.max_retries, timeout=jc.timeout_s)
        c = calibrate_judge(cfg, task_type, client)
    except (LookupError, ValueError, ConnectionError, JudgeBudgetError) as exc:  # API errors are the latter two
        return 2, f"ftops judge calibrate: {exc}"
    verdict = ("the gate relies on it" if c.kappa >= jc.min_kappa
               else f"below evaluation.judge.min_kappa {jc.min_kappa:.2f}: the gate will refuse it")  # fmt: skip
    return (0 if c.kappa >= jc.min_kappa else 1), (
        f"judge {c.model} on {c.evalset}: Cohen's kappa {c.kappa:.3f}, accuracy {c.accuracy:.3f} over {c.pairs} "
        f"pairs ({c.ties} ties, {c.unparseable} unparseable; {c.calls} calls, {c.cached} cached, cost {c.cost:.4f}); "
        f"recorded on ftops-{task_type}: {verdict}"
    )


@dataclass(frozen=True)
class JudgeGate:
    """What the judge contributes to a gate decision.

    ``reasons`` are ``ok:``/``FAIL:`` lines to add to :class:`ftops.deployment.gate.GateDecision`'s; ``tags``
    are the model-version tags of CONTRACT.md (only ``judge.model`` and ``judge.kappa`` when the judge was not
    asked because it is not trusted) and ``metrics`` the run metrics (empty then).
    """

    passed: bool
    reasons: list[str]
    result: JudgeResult | None
    tags: dict[str, str]
    metrics: dict[str, float]


def judge_gate(
    cfg: FtopsConfig,
    task_type: str,
    client: openai.OpenAI,
    prompts: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    references: Sequence[str | None] | None = None,
    margin: float = 0.0,
) -> JudgeGate:
    """Judge the candidate's answers against the champion's, if the task type's judge is trusted.

    The recorded calibration is read first: an uncalibrated judge, one calibrated as another model, or one whose
    kappa is below ``evaluation.judge.min_kappa`` is not asked at all (nothing is spent) and the decision fails
    with the reason. Otherwise both answer orders are judged and the net win's lower bound must exceed zero.

    Args:
        cfg: The run's config snapshot.
        task_type: A task type configured with ``metric: judge``.
        client: An ``openai.OpenAI`` client for the judge's endpoint.
        prompts: The eval prompts, answered by both models.
        candidate: The candidate's answers.
        champion: The champion's (or the base model's) answers to the same prompts.
        references: The eval set's references (shown to the judge), or None.
        margin: ``gate.replace_margin`` when the champion is an upstream model (not worse suffices), else 0.

    Raises:
        JudgeBudgetError: Judging needs more than ``evaluation.judge.max_calls`` calls (nothing is spent).
        RetryableAPIError: The judge stayed unavailable after the client's retries.
        APIRequestError: The judge refused the request.
    """
    from ftops.deployment.gate import judge_criteria, judge_trust
    from ftops.evaluation.judge import compare_answers
    from ftops.evaluation.judge_calibration import read_calibration

    jc = cfg.evaluation.judge
    calibration = read_calibration(task_type)
    trusted, why = judge_trust(calibration, jc, task_type)
    kappa = calibration.kappa if calibration is not None else None
    if not trusted:
        log.warning("Not judging %s: %s", task_type, why)
        tags = {"judge.model": jc.model, "judge.kappa": "none" if kappa is None else f"{kappa:.4f}"}
        return JudgeGate(False, judge_criteria(None, calibration, jc, task_type), None, tags, {})
    result = compare_answers(client, jc, prompts, candidate, champion, references=references, task_type=task_type,
                             confidence=cfg.gate.confidence, resamples=cfg.gate.bootstrap_resamples)  # fmt: skip
    reasons = judge_criteria(result, calibration, jc, task_type, margin)
    return JudgeGate(all(r.startswith("ok:") for r in reasons), reasons, result, result.tags(kappa), result.metrics())
