"""``POST /v1/feedback``: a client's rating, verdict and correction on a logged call, stored beside what the
gateway recorded.

The gateway's ``success`` (did the model answer) is never changed: the client's verdict (did the answer do its
job) goes to ``task_success`` (``success`` in a feedback body is read as ``task_success``, for older clients).
Feedback is taken only with the API key that made the call (the row's ``key_id``); another key's call id gets
the same 404 as an unknown id, so a key learns nothing of other keys' calls.

A ``correction`` (the right answer, text up to ``serving.max_correction_chars``) is scrubbed (PII and secrets
replaced by typed placeholders, as curation scrubs prompts; one holding a secret that cannot be removed is
refused) and stored beside the row with the key that sent it (``correction_key_id``) and when
(``corrected_at``); a later correction replaces an earlier one. Its text is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ftops.core.text import check_text
from ftops.serving.openai_wire import ApiError
from ftops.warehouse.schema import log_tables

if TYPE_CHECKING:
    from ftops.serving.interaction_log import InteractionLogger

log = logging.getLogger(__name__)


def record_feedback(engine: sa.Engine, table: str, logger: InteractionLogger, body: Any, key_id: str | None,
                    recent: Container[str] = (), *, max_correction_chars: int = 5000) -> dict[str, Any]:  # fmt: skip
    """Record a rating (1-5), the client's verdict (``task_success``) and/or a correction (the right answer) on a
    call made with key ``key_id``.

    Args:
        engine: The warehouse.
        table: The interaction log table.
        logger: The gateway's spool (flushed once when the call was answered here but is not in the warehouse).
        body: The request's JSON body: ``id`` and ``rating``, ``task_success`` and/or ``correction``.
        key_id: The calling key's id; None when the gateway takes no keys.
        recent: Ids of calls this gateway process answered (their rows may still be spooled).
        max_correction_chars: The longest correction taken (422 past it).

    Returns:
        The feedback object that is answered.

    Raises:
        ApiError: 422 for a malformed body; 404 when no call of this key has the id; 503 while the warehouse
            (or the call's still-spooled row) cannot be reached.
    """
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object {id, rating, task_success, correction}",
                       code="invalid_value")  # fmt: skip
    call_id, rating = body.get("id"), body.get("rating")
    verdict_field = "task_success" if "task_success" in body else "success"
    verdict = body.get(verdict_field)
    if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
        raise ApiError(422, "id must be the id of a chat completion", code="invalid_value", param="id")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
        raise ApiError(422, f"rating must be an integer from 1 to 5, got {rating!r}"[:200], code="invalid_value",
                       param="rating")  # fmt: skip
    if verdict is not None and not isinstance(verdict, bool):
        raise ApiError(422, f"{verdict_field} must be true, false or null, got {verdict!r}"[:200],
                       code="invalid_value", param=verdict_field)  # fmt: skip
    correction = _correction(body.get("correction"), max_correction_chars)
    if rating is None and verdict is None and correction is None:
        raise ApiError(422, "send a rating (1-5), task_success (true/false), a correction, or several",
                       code="invalid_value", param="rating")  # fmt: skip
    values: dict[str, Any] = {"user_feedback": rating} if rating is not None else {}
    values |= {"task_success": verdict} if verdict is not None else {}
    if correction is not None:
        values |= {"correction": correction, "correction_key_id": key_id, "corrected_at": datetime.now(UTC)}
    try:
        found = _store(engine, table, call_id, key_id, values)
        if not found and call_id in recent:  # answered here, maybe still in the spool
            logger.flush()
            found = _store(engine, table, call_id, key_id, values)
            if not found and logger.spooled():  # else the row is in the warehouse: another key's call
                raise ApiError(503, "the call's row is still spooled (the warehouse is unreachable): retry later",
                               "server_error", "warehouse_unavailable")  # fmt: skip
    except sa.exc.OperationalError as exc:  # the type only: the driver's message may quote parameters
        log.warning("Feedback not stored, warehouse unreachable: %s", type(exc.orig or exc).__name__)
        raise ApiError(503, "the warehouse is unreachable: retry later", "server_error",
                       "warehouse_unavailable") from None  # fmt: skip
    if not found:  # also another key's call: its existence is not disclosed
        raise ApiError(404, "no call with this id was made with this API key", code="not_found", param="id")
    if correction is not None:
        log.info("Correction of %d characters stored for call %s", len(correction), call_id)
    return {"id": call_id, "object": "feedback", "rating": rating, "task_success": verdict,
            "corrected": correction is not None}  # fmt: skip


def _correction(value: Any, cap: int) -> str | None:
    """The correction of a feedback body, checked (None when absent); never quoted in an error (user text)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "correction must be non-empty text (the right answer)", code="invalid_value",
                       param="correction")  # fmt: skip
    if len(value) > cap:
        raise ApiError(422, f"correction is {len(value)} characters; at most {cap} are taken", code="invalid_value",
                       param="correction")  # fmt: skip
    try:
        check_text("correction", value)
    except ValueError as exc:  # names the field and the position, never the text
        raise ApiError(422, str(exc), code="invalid_value", param="correction") from None
    from ftops.curation.scrub import scrub

    scrubbed = scrub(value)
    if scrubbed.unsafe:
        raise ApiError(422, "correction holds a secret that cannot be removed safely (an unterminated private key "
                       "block): send it without", code="invalid_value", param="correction")  # fmt: skip
    return scrubbed.text


def _store(engine: sa.Engine, table: str, call_id: str, key_id: str | None, values: dict[str, Any]) -> bool:
    _, t, _, _ = log_tables(table)
    same_key = t.c.key_id.is_(None) if key_id is None else t.c.key_id == key_id
    with engine.begin() as conn:
        return conn.execute(sa.update(t).where(t.c.id == call_id, same_key).values(**values)).rowcount > 0
