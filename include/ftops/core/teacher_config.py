"""The ``teacher`` section of the FT-Ops config: a stronger model that relabels failed and low-rated prompts.

Kept apart from :mod:`ftops.core.config` for its size; :mod:`ftops.core.config` re-exports
:class:`TeacherConfig`. What the teacher does is :mod:`ftops.curation.teacher`.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftops.core.names import check_task_type

__all__ = ["TeacherConfig"]


class TeacherConfig(BaseModel):
    """``teacher:``: relabel failed and low-rated prompts (scrubbed) with a teacher model, within a nightly budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Send the night's failed and low-rated prompts (scrubbed) to the teacher.")
    conn_id: str = Field(
        "ftops_teacher",
        description="Airflow connection of the teacher's OpenAI-compatible API: key in the password, base URL in "
        "the host.",
    )
    model: str = Field("gpt-4.1", min_length=1, description="The teacher model's name at that endpoint.")
    max_rows: int = Field(
        200, ge=0, description="Most new teacher calls (one per distinct scrubbed prompt) per UTC day, all task "
        "types together; answers already stored are free."
    )  # fmt: skip
    max_cost: float = Field(
        1.0, ge=0, description="Most money spent on the teacher per UTC day, all task types together; a call is "
        "only made when its worst case (estimated prompt tokens, max_answer_tokens) still fits."
    )  # fmt: skip
    price_input: float = Field(2.0, ge=0, description="Price of one million prompt tokens (the response's usage).")
    price_output: float = Field(8.0, ge=0, description="Price of one million completion tokens (the response's usage).")
    max_answer_tokens: int = Field(
        512, ge=1, description="Most tokens of one answer (the request's max_tokens): bounds one call's cost."
    )
    concurrency: int = Field(4, ge=1, le=64, description="Teacher requests in flight at once.")
    timeout_s: float = Field(30, gt=0, description="Seconds one teacher request may take.")
    max_retries: int = Field(
        1, ge=0, le=10, description="Retries of a failed request by the client (429, 5xx, timeouts); after them "
        "the teacher counts as unreachable for the run: no relabel, curation goes on."
    )  # fmt: skip
    formats: dict[str, str] = Field(
        default_factory=dict,
        description="Task type -> regular expression the whole answer (stripped) must match; task types not "
        "listed are checked by curation's response rules (length, error text) only.",
    )

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: dict[str, str]) -> dict[str, str]:
        for task_type, pattern in value.items():
            check_task_type(task_type)
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"teacher.formats[{task_type!r}] is not a regular expression: {exc}") from None
        return value
