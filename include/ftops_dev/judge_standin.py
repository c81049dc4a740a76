"""A judge stand-in: answers FT-Ops judge requests from the simulator's known truth, deterministically.

Used by the tests' fake OpenAI server and by the stand-in server (:mod:`ftops_dev.teacher_standin`). A request
is a judge request when its system message is :data:`ftops.evaluation.judge.JUDGE_SYSTEM_PROMPT`; the verdict prefers the answer that does
the job (:func:`ftops_dev.known_truth.is_right`), and is ``tie`` when both or neither do. For a question the
simulator did not make, an answer is right when it equals the request's reference after normalisation (no
reference: ``tie``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ftops.evaluation.judge import JUDGE_SYSTEM_PROMPT
from ftops_dev.known_truth import is_right
from ftops_dev.task_types import TASKS


def is_judge_request(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether chat ``messages`` are an FT-Ops judge request (by the judge's system prompt)."""
    return bool(messages) and messages[0].get("role") == "system" and messages[0].get("content") == JUDGE_SYSTEM_PROMPT


def verdict(messages: Sequence[Mapping[str, Any]]) -> str:
    """The truthful verdict on a judge request: ``"A"``, ``"B"`` or ``"tie"``.

    Raises:
        ValueError: Not a judge request, or its user message is not the judge's JSON.
    """
    if not is_judge_request(messages):
        raise ValueError("not an FT-Ops judge request (the first message must be the judge's system prompt)")
    user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    try:
        payload = json.loads(str(user))
        question, a, b = str(payload["question"]), str(payload["answers"]["A"]), str(payload["answers"]["B"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the judge request's user message is not the judge's JSON ({type(exc).__name__})") from None
    right = _rightness(question, a, b, payload.get("task"), payload.get("reference"))
    if right is None or right[0] == right[1]:
        return "tie"
    return "A" if right[0] else "B"


def _rightness(question: str, a: str, b: str, task: object, reference: object) -> tuple[bool, bool] | None:
    """Whether each answer is right: from the simulator's truth when it knows the question, else the reference."""
    for task_type in [task] if task in TASKS else list(TASKS):
        try:
            return is_right(str(task_type), question, a), is_right(str(task_type), question, b)
        except LookupError:
            continue
    if isinstance(reference, str):
        from ftops.evaluation.metrics import normalise

        return normalise(a) == normalise(reference), normalise(b) == normalise(reference)
    return None


def chat_completion(body: Mapping[str, Any], *, answer: str | None = None) -> dict[str, Any]:
    """The ``POST /v1/chat/completions`` response body for a judge request (for a demo server's route).

    Args:
        body: The request body (``model``, ``messages``).
        answer: Answer this instead of the truthful verdict (``"A"``: a judge biased to the first position).

    Raises:
        ValueError: Not a judge request.
    """
    reply = verdict(body.get("messages") or []) if answer is None else answer
    return completion(body.get("model"), reply, body.get("messages") or [])


def completion(model: object, reply: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``chat.completion`` response body with ``reply`` and its usage (4 characters a token, +3 a message)."""
    import math
    import time
    import uuid

    prompt_tokens = sum(math.ceil(len(str(m.get("content") or "")) / 4) + 3 for m in messages)
    completion_tokens = math.ceil(len(reply) / 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": reply, "refusal": None}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }  # fmt: skip
