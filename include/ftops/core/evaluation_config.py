"""The ``evaluation`` section of the FT-Ops config: how each task type is scored, and the LLM judge.

Kept apart from :mod:`ftops.core.config` for its size; :mod:`ftops.core.config` re-exports
:class:`EvaluationConfig` and :class:`JudgeConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftops.core.names import check_task_type

__all__ = ["EvaluationConfig", "JudgeConfig", "Metric"]

Metric = Literal["exact", "judge"]


class JudgeConfig(BaseModel):
    """``evaluation.judge:``: a pairwise LLM judge behind any OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conn_id: str = Field(
        "ftops_judge",
        description="Airflow connection of the judge's API: key in the password, base URL in the host "
        "(the CLI reads it from $AIRFLOW_CONN_<CONN_ID> given as JSON).",
    )
    model: str = Field("gpt-4.1-mini", min_length=1, description="The judge model's name at that endpoint.")
    max_calls: int = Field(
        1000,
        ge=1,
        description="Most judge calls one evaluation or calibration may make (cached verdicts are free); "
        "an evaluation that needs more fails before its first call. Two calls per prompt (both answer orders).",
    )
    price_per_1m_tokens: float = Field(
        0.0,
        ge=0,
        description="Price of one million judge tokens (prompt + completion), to record each "
        "evaluation's cost; 0 = not priced.",
    )
    min_kappa: float = Field(
        0.6,
        ge=-1,
        le=1,
        description="The gate relies on the judge only when its recorded calibration (Cohen's "
        "kappa against an eval set's human labels, `ftops judge calibrate`) is at least this.",
    )
    timeout_s: float = Field(30, gt=0, description="Seconds one judge request may take.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries of a failed judge request (429, 5xx, timeouts), "
                             "with the client's exponential backoff or the server's Retry-After.")  # fmt: skip
    concurrency: int = Field(4, ge=1, le=64, description="Judge requests in flight at once.")
    max_answer_chars: int = Field(
        4000,
        ge=1,
        description="Each answer (and the question and reference) is cut to this many characters in "
        "the judge's request, which bounds the tokens (and the cost) of one call.",
    )
    cache_dir: str | None = Field(
        None,
        description="Folder of cached verdicts (keyed by a hash of model, template, question, reference and "
        "answers); empty: FTOPS_HOME/cache/judge. A per-worker cache is fine: a miss only costs a call.",
    )


class EvaluationConfig(BaseModel):
    """``evaluation:``: the correctness measure of each task type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: dict[str, Metric] = Field(
        default_factory=dict,
        description="Task type -> `exact` (answer equals the reference after normalisation) "
        "or `judge` (pairwise LLM judge of candidate vs champion); task types not listed use `exact`.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The pairwise LLM judge.")

    @field_validator("metrics")
    @classmethod
    def _task_types(cls, value: dict[str, Metric]) -> dict[str, Metric]:
        for task_type in value:
            check_task_type(task_type)
        return value

    def metric(self, task_type: str) -> Metric:
        """The correctness measure of a task type (``exact`` unless configured)."""
        return self.metrics.get(task_type, "exact")
