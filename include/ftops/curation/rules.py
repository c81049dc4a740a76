"""Row-level curation rules: what makes a log row malformed (quarantined) or not worth keeping (filtered),
with the hashing and normalisation that duplicates, users and the split are keyed on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ftops.core.chat import ChatFormatError, context_and_prompt, logged_messages
from ftops.core.config import CurationConfig
from ftops.core.names import is_task_type
from ftops.core.userkey import hmac_user_key


def normalise_text(text: str) -> str:
    """Unicode-normalised, lowercased, whitespace-collapsed text with edge punctuation removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip(" .!?,;:")


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()


def user_key(user_id: Any) -> str | None:
    """A pseudonymous key for a user id (the id itself never leaves the warehouse): an HMAC under the
    installation's secret (:mod:`ftops.core.userkey`), or None for a missing or blank id."""
    if is_missing(user_id) or not str(user_id).strip():
        return None
    return hmac_user_key(user_id)


def split_of(prompt: str, test_share: float) -> str:
    """``"test"`` or ``"train"`` from a hash of the normalised prompt: an example never changes split."""
    bucket = int(text_hash(prompt)[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_share else "train"


def is_missing(value: Any) -> bool:
    """None, NaN or NaT."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("NaT", "<NA>")


def _is_number(value: Any) -> bool:
    """An int or float (numpy's too), not a bool or a string that looks like one."""
    if isinstance(value, bool | str | bytes) or type(value).__name__ == "bool_":
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def as_utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _text_problem(value: Any, column: str) -> str | None:
    if is_missing(value):
        return f"null_{column}"
    if not isinstance(value, str):
        return f"{column}_not_text"
    if not value.strip():
        return f"empty_{column}"
    if "\x00" in value:
        return f"nul_byte_in_{column}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return f"invalid_unicode_in_{column}"
    if "\ufffd" in value:  # the replacement character: bytes that were not valid text upstream
        return f"invalid_unicode_in_{column}"
    return None


def malformed_reason(row: dict[str, Any], cfg: CurationConfig, future_after: datetime | None) -> str | None:
    """The quarantine reason of a malformed row (the first problem found), or None when it is well formed."""
    if is_missing(row.get("id")) or not str(row["id"]).strip():
        return "null_id"
    if "task_type" in row and not is_task_type(row["task_type"]):
        return "invalid_task_type"  # it would name folders, tags and models: see ftops.core.names
    for column in ("prompt", "response"):
        problem = _text_problem(row.get(column), column)
        if problem:
            return problem
    if len(row["prompt"]) > cfg.max_prompt_chars:
        return "prompt_too_long"
    request = row.get("request")  # optional: the whole request; its last user message must be the prompt
    if not is_missing(request) and request != "":
        try:
            _, last = context_and_prompt(logged_messages(request))
        except ChatFormatError:
            return "malformed_request"
        if last != row["prompt"]:
            return "request_prompt_mismatch"
    correction = row.get("correction")  # optional; blank means none
    if not is_missing(correction) and (not isinstance(correction, str) or correction.strip()):
        if problem := _text_problem(correction, "correction"):
            return problem
    if "timestamp" in row:
        stamp = as_utc(row["timestamp"]) if not is_missing(row["timestamp"]) else None
        if stamp is None:
            return "null_timestamp" if is_missing(row["timestamp"]) else "timestamp_not_a_time"
        if future_after is not None and stamp >= future_after:
            return "timestamp_in_future"
    rating: Any = row.get("user_feedback")
    if not is_missing(rating):
        if not _is_number(rating):
            return "rating_not_a_number"
        if not math.isfinite(float(rating)) or float(rating) != int(float(rating)):
            return "rating_not_integer"
        if not 1 <= float(rating) <= 5:
            return "rating_out_of_range"
    success = row.get("success")
    if is_missing(success):
        return "null_success"
    if isinstance(success, str) or success not in (True, False):
        return "success_not_boolean"
    verdict = row.get("task_success")
    if not is_missing(verdict) and (isinstance(verdict, str) or verdict not in (True, False)):
        return "task_success_not_boolean"
    for column in ("latency_ms", "confidence"):
        value = row.get(column)
        if not is_missing(value) and not _is_number(value):
            return f"{column}_not_a_number"
    latency: Any = row.get("latency_ms")
    if not is_missing(latency) and float(latency) < 0:
        return "negative_latency"
    metadata = row.get("metadata")
    if isinstance(metadata, str) and metadata.strip():
        try:
            json.loads(metadata)
        except ValueError:
            return "metadata_not_json"
    return None


def answer_problem(text: str, cfg: CurationConfig) -> str | None:
    """Why ``text`` cannot be a training target (``not_text``, ``too_short``, ``too_long``, ``error_text``), or
    None: the rules that apply to every answer, served or not."""
    if "\x00" in text or "\ufffd" in text:
        return "not_text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return "not_text"
    if len(text) < cfg.min_response_chars:
        return "too_short"
    if len(text) > cfg.max_response_chars:
        return "too_long"
    lowered = text.lower()
    return "error_text" if any(marker in lowered for marker in cfg.error_markers) else None


def filter_reason(row: dict[str, Any], cfg: CurationConfig, trusted: frozenset[str] = frozenset()) -> str | None:
    """Why a row's served answer is not a training target (``no_rating``, ``low_rating``, ...), or None.

    An unrated answer of a ``trusted`` model version (a trusted teacher: ``ftops trust-teacher``) goes on to the
    other rules instead of being filtered as ``no_rating``; a rated one is held to the threshold like any other.
    """
    rating: Any = row.get("user_feedback")
    if is_missing(rating):
        if not trusted or str(row.get("model_version")) not in trusted:
            return "no_rating"
    elif float(rating) < cfg.quality_threshold:
        return "low_rating"
    if not bool(row.get("success")):
        return "failed_call"
    verdict = row.get("task_success")
    if not is_missing(verdict) and not bool(verdict):  # the client said the answer did not do its job
        return "task_failed"
    problem = answer_problem(row["response"], cfg)
    if problem:
        return "error_text" if problem == "error_text" else f"response_{problem}"
    latency: Any = row.get("latency_ms")
    if not is_missing(latency) and float(latency) > cfg.max_latency_ms:
        return "too_slow"
    return None


def _content(row: dict[str, Any]) -> str:
    return json.dumps({k: row.get(k) for k in ("prompt", "response", "user_feedback", "success", "user_id")},
                      default=str, sort_keys=True)  # fmt: skip


def duplicate_ids(records: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Row index -> outcome for rows sharing an id: repeats of the same content are duplicates, rows that
    share an id with other content are all quarantined (which one is true cannot be known)."""
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(records):
        if not is_missing(row.get("id")):
            by_id[str(row["id"])].append(i)
    outcome: dict[int, str] = {}
    for indices in by_id.values():
        if len(indices) < 2:
            continue
        if len({_content(records[i]) for i in indices}) > 1:
            outcome.update(dict.fromkeys(indices, "quarantined:duplicate_id_conflict"))
        else:
            outcome.update(dict.fromkeys(indices[1:], "filtered:duplicate_id"))
    return outcome


def rating_bursts(records: Sequence[dict[str, Any]], indices: Sequence[int], cfg: CurationConfig) -> set[int]:
    """Rows in a burst: ``burst_top_ratings`` or more top ratings from one user within the burst window."""
    window = timedelta(minutes=cfg.burst_window_minutes)
    by_user: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for i in indices:
        row = records[i]
        stamp = as_utc(row.get("timestamp"))
        rating: Any = row.get("user_feedback")  # a corrected row may have none
        if stamp is not None and user_key(row.get("user_id")) and not is_missing(rating) and float(rating) >= 5:
            by_user[str(row["user_id"])].append((stamp, i))
    flagged: set[int] = set()
    for stamps in by_user.values():
        stamps.sort()
        start = 0
        for end in range(len(stamps)):
            while stamps[end][0] - stamps[start][0] > window:
                start += 1
            if end - start + 1 >= cfg.burst_top_ratings:
                flagged.update(i for _, i in stamps[start : end + 1])
    return flagged


# Order of trust of a candidate's target (ftops.curation.targets.SOURCES): a correction first, the model's own last.
_TRUST = {"correction": 0, "teacher": 1}


def quality_key(row: dict[str, Any]) -> tuple[int, float, float, float, str]:
    """Sort key of candidates, best first: the target's source by trust, then rating, confidence, latency, id."""
    confidence: Any = row.get("confidence")
    latency: Any = row.get("latency_ms")
    rating: Any = row.get("user_feedback")
    return (
        _TRUST.get(row.get("source") or "served", 2),
        -(0.0 if is_missing(rating) else float(rating)),
        -(0.0 if is_missing(confidence) else float(confidence)),
        0.0 if is_missing(latency) else float(latency),
        str(row["row_id"]),
    )
