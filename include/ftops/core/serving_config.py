"""The ``serving`` section of the FT-Ops config (kept apart from :mod:`ftops.core.config` for its size).

:mod:`ftops.core.config` re-exports :class:`ServingConfig`; import it from there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServingConfig"]


class ServingConfig(BaseModel):
    """``serving:``: ``ftops serve``, the OpenAI-compatible gateway, and the limits it puts on every client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address `ftops serve` binds; 0.0.0.0 exposes it to the network.")
    port: int = Field(8000, ge=1, le=65535, description="Port `ftops serve` listens on.")
    max_batch: int = Field(16, ge=1, le=256, description="Most requests for one model version decoded together.")
    batch_wait_ms: float = Field(
        50, ge=0, le=1000, description="Under load, the longest a batch waits for the clients it just answered to "
        "send again before decoding starts; an idle gateway never waits.",
    )
    default_max_tokens: int = Field(64, ge=1, description="Answer length cap when a request sets none, in tokens.")
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask for.")
    max_messages: int = Field(64, ge=1, description="Most messages one request may carry.")
    max_request_chars: int = Field(20_000, ge=1, description="Most characters of message content per request.")
    max_tokens_buckets: list[int] = Field(
        [16, 32, 64, 128, 256], min_length=1, description="A local model decodes each request at the smallest of "
        "these caps that holds its max_tokens (answers are then cut back to it), so requests with different caps "
        "share one batch instead of decoding in one small batch per distinct cap.",
    )
    max_queue: int = Field(
        64, ge=1, description="Requests that may wait for a batch per model version; past it a request gets 429 "
        "with Retry-After. 64 = 4 batches of max_batch 16: a queued request waits at most ~4 batch times. For a "
        "remote model (upstream API, engine), which gets each request on its own, the calls in flight to it.",
    )
    request_timeout_s: float = Field(
        60, gt=0, description="Deadline of one request from queueing to its answer; past it the call is logged as "
        "failed (finish_reason 'timeout') and answered 504.",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 past it).")
    body_timeout_s: float = Field(
        10, gt=0, description="Seconds a client has to send its whole request body (408 past it): a client that "
        "holds a body open gives its connection back.",
    )
    max_user_chars: int = Field(256, ge=1, le=1000, description="Longest `user` field a request may carry (stored as `<key id>/<user>` when keys are on).")
    max_correction_chars: int = Field(
        5000, ge=1, le=100_000, description="Longest `correction` a `/v1/feedback` body may carry (422 past it); "
        "5000 = curation's default max_response_chars, the longest answer a training target may be.",
    )
    alias_ttl_s: float = Field(5, ge=0, description="Seconds the registry's aliases are cached by the router.")
    max_negative_routings: int = Field(
        1024, ge=1, description="Model names without a champion (any name a client sends) remembered for "
        "alias_ttl_s in a bounded LRU, so random names neither grow memory nor each read the registry.",
    )
    registry_timeout_s: float = Field(
        3, gt=0, description="`ftops serve`'s MLflow HTTP timeout (MLFLOW_HTTP_REQUEST_TIMEOUT unless set), with no "
        "retries: a slow registry delays one background read, never a request.",
    )
    flush_every_s: float = Field(2, gt=0, description="Seconds between two flushes of the log spool to the warehouse.")
    spool_segment_mb: float = Field(
        16, gt=0, description="The log spool's active file becomes a segment at this size (MiB), also while the "
        "warehouse is down, so recovery streams bounded files.",
    )
    spool_max_mb: float = Field(
        1024, gt=0, description="Cap of the log spool (MiB; ~1 KiB a row: about a million calls). Once full, calls "
        "are answered 503 `spool_full` with Retry-After until the warehouse takes the rows.",
    )
    api_key_hashes_env: str = Field(
        "FTOPS_API_KEY_HASHES",
        description="Environment variable holding comma-separated SHA-256 hex digests of the accepted API keys "
        "(`ftops hash-api-key` makes one); unset or empty: no key needed (bind 127.0.0.1 then).",
    )
