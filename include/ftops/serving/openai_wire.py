"""The OpenAI wire format of the gateway: request checks, error objects, responses and stream chunks.

Requests are checked field by field into a :class:`ChatRequest`; anything wrong becomes an :class:`ApiError`
that renders as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status. Fields an
OpenAI client may send that the gateway has no use for (``temperature``, ``top_p``, ``seed``...) are accepted
and ignored: answers are greedy, so they are deterministic whatever the temperature.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ftops.serving.backends import Completion

ROLES = ("system", "user", "assistant", "developer")
MODEL_PREFIX = "ftops/"


class ApiError(Exception):
    """An error answered in the OpenAI format.

    Args:
        status: The HTTP status.
        message: What went wrong and what to do, for the client.
        type_: OpenAI's error type (``invalid_request_error``, ``authentication_error``, ``server_error``...).
        code: A short machine-readable code.
        param: The request field at fault, if one is.
    """

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for and how its body must arrive (from ``serving`` in the config)."""

    default_max_tokens: int = 64
    max_tokens_limit: int = 256
    max_messages: int = 64
    max_request_chars: int = 20_000
    max_user_chars: int = 256
    max_correction_chars: int = 5000  # of a /v1/feedback correction
    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 10.0
    max_tokens_buckets: tuple[int, ...] = (16, 32, 64, 128, 256)

    def decode_cap(self, max_tokens: int) -> int:
        """The bucket a request's cap is decoded at: the smallest bucket that holds it (else its own cap)."""
        return min((b for b in self.max_tokens_buckets if b >= max_tokens), default=max_tokens)


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``/v1/chat/completions`` request."""

    task_type: str
    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    stream: bool
    include_usage: bool
    user: str | None
    sampling: tuple[tuple[str, Any], ...] = ()  # the request's sampling parameters, as sent (logged, see below)

    @property
    def prompt(self) -> str:
        """The last user message: what the interaction log records as the prompt."""
        return next((c for r, c in reversed(self.messages) if r == "user"), "")

    def logged(self) -> dict[str, Any]:
        """The whole request as the interaction log's ``request`` column keeps it: every message (system prompt,
        earlier turns) and the sampling parameters the client sent (honoured or not: see README, Serving)."""
        return {"messages": [{"role": r, "content": c} for r, c in self.messages], "max_tokens": self.max_tokens,
                **dict(self.sampling)}  # fmt: skip


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limits: Limits) -> bytes:
    """A request body, refused on its ``Content-Length`` before reading and read with a size cap and a deadline.

    Raises:
        ApiError: 413 past ``max_body_bytes`` (declared or counted: a body without or lying about its length stops
            at the cap), 400 for a malformed ``Content-Length``, 408 when the whole body has not arrived within
            ``body_timeout_s`` (a client holding a body open gets its answer and its connection closed).
    """
    cap, limit_s = limits.max_body_bytes, limits.body_timeout_s
    if declared is not None and (not declared.strip().isdigit() or int(declared) > cap):
        valid = declared.strip().isdigit()
        raise ApiError(413 if valid else 400, f"Content-Length {declared[:30]!r}: at most {cap} bytes are accepted "
                       "(serving.max_body_bytes)", code="request_too_large" if valid else "invalid_value",
                       headers={"connection": "close"})  # fmt: skip

    async def read() -> bytes:
        parts, size = [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > cap:
                raise ApiError(413, f"the request body is over {cap} bytes (serving.max_body_bytes)",
                               code="request_too_large", headers={"connection": "close"})  # fmt: skip
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(read(), limit_s)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {limit_s} s (serving.body_timeout_s)",
                       code="request_timeout", headers={"connection": "close"}) from None  # fmt: skip


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, or a 400 naming the problem."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    except RecursionError:  # a body nested thousands of levels deep
        raise ApiError(400, "We could not parse the JSON body of your request: it is nested too deeply",
                       code="invalid_json") from None  # fmt: skip


def check_text(value: str, param: str) -> str:
    """``value`` unless it holds a character the interaction log cannot store (400 naming ``param``)."""
    from ftops.core.text import check_text as storable

    try:
        storable(param, value)
    except ValueError as exc:
        raise ApiError(400, f"{exc}, which cannot be stored", code="invalid_value", param=param) from None
    return value


def _content(value: Any, i: int) -> str:
    """A message's content: text, or a list of ``{"type": "text", "text"}`` parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):  # fmt: skip
        return "".join(p["text"] for p in value)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", code="invalid_value",
                   param=f"messages[{i}].content")  # fmt: skip


def _int_field(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {value!r}", code="invalid_value",
                       param=name)  # fmt: skip
    return value


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    """Check a chat completions body.

    Raises:
        ApiError: 400 for a malformed field (the param named), 404 for a model that is not ``ftops/<task_type>``.
    """
    from ftops.core.names import InvalidNameError, check_task_type

    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_value")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required: 'ftops/<task_type>' (GET /v1/models lists them)",
                       code="missing_required_parameter", param="model")  # fmt: skip
    try:
        task_type = check_task_type(model.removeprefix(MODEL_PREFIX)) if model.startswith(MODEL_PREFIX) else ""
    except InvalidNameError:
        task_type = ""
    if not task_type:
        raise ApiError(404, f"The model {model!r} does not exist: models are named 'ftops/<task_type>' "
                            "(GET /v1/models lists them)", code="model_not_found", param="model")  # fmt: skip
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", code="invalid_value",
                       param="messages")  # fmt: skip
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"messages holds {len(messages)} messages; at most {limits.max_messages} are allowed",
                       code="invalid_value", param="messages")  # fmt: skip
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else None
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}",
                           code="invalid_value", param=f"messages[{i}].role")  # fmt: skip
        content = check_text(_content(m.get("content"), i), f"messages[{i}].content")
        turns.append(("system" if role == "developer" else str(role), content))
    chars = sum(len(c) for _, c in turns)
    if chars > limits.max_request_chars:
        raise ApiError(400, f"the messages hold {chars} characters; at most {limits.max_request_chars} are allowed",
                       code="context_length_exceeded", param="messages")  # fmt: skip
    if not any(r == "user" for r, _ in turns):
        raise ApiError(400, "messages must contain a user message", code="invalid_value", param="messages")
    n = _int_field(body, "n", 1, 1)
    del n  # only n=1 is served: several greedy answers would be identical
    cap = _int_field(body, "max_completion_tokens", 1, limits.max_tokens_limit)
    if cap is None:
        cap = _int_field(body, "max_tokens", 1, limits.max_tokens_limit)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", code="invalid_value", param="stream")
    options = body.get("stream_options") or {}
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, "user must be a string", code="invalid_value", param="user")
    if user is not None and len(user) > limits.max_user_chars:
        raise ApiError(400, f"user holds {len(user)} characters; at most {limits.max_user_chars} are allowed",
                       code="invalid_value", param="user")  # fmt: skip
    if user is not None:
        check_text(user, "user")
    return ChatRequest(
        task_type=task_type, messages=tuple(turns), max_tokens=cap or limits.default_max_tokens, stream=stream,
        include_usage=bool(isinstance(options, Mapping) and options.get("include_usage")), user=user or None,
        sampling=_sampling(body),
    )  # fmt: skip


SAMPLING = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


def _sampling(body: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The sampling parameters worth logging: numbers, and ``stop`` as text or a list of up to 4 texts (others
    are left out of the log, not refused: the gateway decodes greedily whatever they say)."""
    out: list[tuple[str, Any]] = []
    for name in SAMPLING:
        value = body.get(name)
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        texts = isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str) and len(v) <= 64 for v in value)
        if number or texts or (isinstance(value, str) and len(value) <= 64):
            out.append((name, value))
    return tuple(out)


def _usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}  # fmt: skip


def completion_body(call_id: str, model: str, fingerprint: str, c: Completion, created: int | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object (``id`` is the logged interaction row's id)."""
    return {
        "id": call_id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                     "finish_reason": c.finish_reason}],
        "usage": _usage(c),
    }  # fmt: skip


def stream_events(call_id: str, model: str, fingerprint: str, c: Completion, include_usage: bool) -> Iterator[str]:
    """Server-sent events of a ``chat.completion.chunk`` stream, ending with ``data: [DONE]``.

    The answer is complete before the first chunk (it was decoded in a batch), so the chunks carry it word
    by word: an OpenAI client's stream loop works unchanged, but the first token arrives with the last.
    """
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None,
              choices: bool = True) -> str:  # fmt: skip
        body: dict[str, Any] = {"id": call_id, "object": "chat.completion.chunk", "created": created, "model": model,
                                "system_fingerprint": fingerprint,
                                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                                if choices else []}  # fmt: skip
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    words = c.text.split(" ")
    for i, word in enumerate(words):
        yield chunk({"content": word if i == 0 else " " + word}, None)
    yield chunk({}, c.finish_reason)
    if include_usage:
        yield chunk({}, None, _usage(c), choices=False)
    yield "data: [DONE]\n\n"
