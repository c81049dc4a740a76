"""An ``openai`` client for any OpenAI-compatible API, with its errors mapped to retryable or not.

:func:`api_errors` turns the client's exceptions into :class:`RetryableAPIError` (a ``ConnectionError``:
rate limits, 408/409, 5xx, timeouts, connection failures) and :class:`APIRequestError` (a ``ValueError``:
the request is wrong; retrying cannot help). Both carry the API's own message. ``openai`` is imported
inside the functions, so importing this module is cheap and opens no connection.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:
    import openai


log = logging.getLogger(__name__)


# -- errors --------------------------------------------------------------------------------------------------
class RetryableAPIError(ConnectionError):
    """The API could not answer now (rate limit, timeout, 5xx, no connection): retry later with backoff.

    Attributes:
        status_code: HTTP status, or None when no response came.
        code: The API's error code, when it gave one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class APIRequestError(ValueError):
    """The API refused the request (bad parameters, unknown model or job, rejected key): do not retry.

    Attributes:
        status_code: HTTP status, or None when the client refused before sending.
        code: The API's error code, when it gave one.
        param: The parameter the API blamed, when it named one.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.param = param


_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def _api_message(exc: Exception) -> str:
    """The API's own message from an error body ``{"message": ...}``, else the client's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(getattr(exc, "message", None) or exc)


@contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Map the ``openai`` client's exceptions to :class:`RetryableAPIError` or :class:`APIRequestError`.

    Args:
        action: What was being done, for the message (``"create fine-tuning job"``).

    Raises:
        RetryableAPIError: 408, 409, 429, 5xx, a timeout or a connection failure.
        APIRequestError: Any other API error (400, 401, 403, 404, 422, an invalid client setting).
    """
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        status, message = exc.status_code, _api_message(exc)
        text = f"{action} failed: HTTP {status}" + (f" ({exc.code})" if exc.code else "") + f": {message}"
        if status in _RETRYABLE_STATUSES or status >= 500:
            raise RetryableAPIError(text, status_code=status, code=exc.code) from exc
        raise APIRequestError(text, status_code=status, code=exc.code, param=exc.param) from exc
    except openai.APITimeoutError as exc:
        raise RetryableAPIError(f"{action} failed: the request timed out") from exc
    except openai.APIConnectionError as exc:
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        raise RetryableAPIError(f"{action} failed: {exc.message}{cause}") from exc
    except openai.OpenAIError as exc:
        raise APIRequestError(f"{action} failed: {_api_message(exc)}") from exc


# -- client --------------------------------------------------------------------------------------------------
def _require_key(api_key: str | None, key_source: str) -> str:
    """The key, or an error: an empty key must not let the client read ``OPENAI_API_KEY`` from the environment,
    which would send a key nobody configured for this API (possibly to another server)."""
    if not api_key or not api_key.strip():
        raise APIRequestError(
            f"no API key in {key_source}: set it there (for a server without auth, any placeholder); "
            "OPENAI_API_KEY from the environment is never used"
        )
    return api_key


DEFAULT_BASE_URL = "https://api.openai.com/v1"


def make_client(
    api_key: str, base_url: str | None, *, max_retries: int = 3, timeout: float = 60, key_source: str = "the settings"
) -> openai.OpenAI:
    """An ``openai.OpenAI`` client for any OpenAI-compatible API.

    Args:
        api_key: The key (the Airflow connection's password). Required: it never falls back to
            ``OPENAI_API_KEY``.
        base_url: e.g. ``https://api.openai.com/v1`` (the connection's host); empty means OpenAI's own
            :data:`DEFAULT_BASE_URL`, never ``OPENAI_BASE_URL`` from the environment (the key must not go to a
            URL the worker's environment chose).
        max_retries: Retries the client makes by itself on 408/409/429/5xx and connection errors, with
            exponential backoff or the server's ``Retry-After``. :func:`submit_job` turns them off for the
            create and does its own look-up-then-retry instead.
        timeout: Seconds per request.
        key_source: Where the key came from, for the error when it is empty (``"Airflow connection
            'openai_default' (password)"``).

    Returns:
        The client (it holds the key; do not log it).

    Raises:
        APIRequestError: The key is empty (the message names ``key_source``).
    """
    import openai

    key = _require_key(api_key, key_source)
    with api_errors("create OpenAI client"):
        client = openai.OpenAI(api_key=key, base_url=base_url or DEFAULT_BASE_URL, max_retries=max_retries, timeout=timeout)
    log.info("OpenAI-compatible API at %s (max_retries=%d, timeout=%ss)", client.base_url, max_retries, timeout)
    return client


def make_async_client(
    api_key: str, base_url: str | None, *, max_retries: int = 3, timeout: float = 60, key_source: str = "the settings"
) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` client (for an asyncio poll loop); arguments and errors as :func:`make_client`.

    Close it after use (``async with client:``).
    """
    import openai

    key = _require_key(api_key, key_source)
    with api_errors("create OpenAI client"):
        client = openai.AsyncOpenAI(api_key=key, base_url=base_url or DEFAULT_BASE_URL, max_retries=max_retries, timeout=timeout)
    log.info("OpenAI-compatible API at %s (async, max_retries=%d, timeout=%ss)", client.base_url, max_retries, timeout)
    return client


def connection_from_env(conn_id: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Key and base URL of an OpenAI-compatible API from ``$AIRFLOW_CONN_<CONN_ID>`` as JSON, outside Airflow.

    For the command line, which cannot ask Airflow: the same variable is what Airflow's connection lookup reads
    in the DAGs, so one setting serves both, e.g.
    ``AIRFLOW_CONN_FTOPS_JUDGE='{"conn_type": "openai", "host": "https://api.example.com/v1", "password": "sk-..."}'``
    (the base URL may also be ``extra.openai_client_kwargs.base_url``, as the OpenAI provider reads it).

    Returns:
        ``{"api_key", "base_url", "key_source"}`` for :func:`make_client`.

    Raises:
        LookupError: The variable is not set.
        ValueError: It is not a JSON object.
    """
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = (os.environ if environ is None else environ).get(name)
    if not raw:
        raise LookupError(f"no connection {conn_id!r} outside Airflow: set {name} to the API as JSON, e.g. "
                          '{"conn_type": "openai", "host": "https://api.openai.com/v1", "password": "<key>"}')  # fmt: skip
    try:
        conn = json.loads(raw)
    except ValueError:
        conn = None
    if not isinstance(conn, dict):
        raise ValueError(f"{name} must be a JSON object with host (base URL) and password (key); a connection URI "
                         "cannot carry a base URL with a path here")  # fmt: skip
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    base_url = conn.get("host") or (extra.get("openai_client_kwargs") or {}).get("base_url")
    return {"api_key": conn.get("password") or "", "base_url": base_url, "key_source": f"the password in {name}"}


# -- evaluation ----------------------------------------------------------------------------------------------
class ChatReply(NamedTuple):
    """One chat completion: its text, wall time and token usage."""

    text: str
    latency_ms: float
    usage_tokens: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


def chat_complete(client: openai.OpenAI, model: str, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> ChatReply:
    """Ask ``model`` for one reply (for evaluating an API model).

    Args:
        client: The API client.
        model: A base or fine-tuned model name.
        messages: Chat turns to answer.
        **kwargs: Passed to ``chat.completions.create`` (``temperature=0``, ``max_tokens``...).

    Returns:
        ``(text, latency_ms, usage_tokens, prompt_tokens, completion_tokens)``; usage is 0 when the server
        reports none.

    Raises:
        APIRequestError: Unknown model or bad request.
        RetryableAPIError: The API is unavailable now.
    """
    started = time.perf_counter()
    with api_errors(f"chat completion with {model}"):
        # plain role/content dicts are valid message params; the client's TypedDict union cannot see that
        turns = cast(Any, [dict(m) for m in messages])
        response = client.chat.completions.create(model=model, messages=turns, **kwargs)
    latency_ms = (time.perf_counter() - started) * 1000
    text = (response.choices[0].message.content or "") if response.choices else ""
    usage = response.usage
    if usage is None:
        return ChatReply(text, latency_ms, 0)
    return ChatReply(text, latency_ms, usage.total_tokens, usage.prompt_tokens, usage.completion_tokens)
