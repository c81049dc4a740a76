"""The rows of the interaction spool: what a row may hold, and how a refused one is written down for a person.

:func:`check_row` is the one gate every row passes before it is spooled (``InteractionLogger.log``), read back
from a segment, or imported (``import_jsonl``). It refuses what a warehouse would refuse later, when refusing
would block the rows behind it: NUL characters and lone surrogates in any text, and over-long user ids.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ftops.core.chat import ChatFormatError, context_and_prompt, logged_messages
from ftops.core.names import check_task_type, key_digest
from ftops.core.text import check_text, printable
from ftops.warehouse.schema import INTERACTION_COLUMNS

# A user id is a name, not a payload. The gateway refuses a `user` over serving.max_user_chars (256, at most 1 000)
# with a 400 and stores it as `<key id>/<user>` when keys are on (13 characters more), so this bound never bites it.
MAX_USER_ID_CHARS = 1024
# The spool folder's files: rows appended now, segments waiting for the warehouse, rows it refused, the owner's lock.
ACTIVE = "active.jsonl"
SEGMENT = "segment-{:08d}.jsonl"
REJECTED = "rejected.jsonl"  # rows the warehouse refused and lines that could not be read, kept for a person
LOCK = "spool.lock"
# PostgreSQL text cannot hold NUL; a lone surrogate cannot be encoded as UTF-8 (every driver refuses it).


def _check_json_strings(value: Any, depth: int = 0) -> None:
    """Every key and string inside a metadata value, checked like top-level text."""
    if depth > 32:
        raise ValueError("metadata is nested deeper than 32 levels")
    if isinstance(value, str):
        check_text("metadata", value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str):
                check_text("metadata", k)
            _check_json_strings(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_json_strings(v, depth + 1)


def check_row(row: Mapping[str, Any], *, fill: bool = True) -> dict[str, Any]:
    """A log row checked against the interaction schema, as JSON-ready values.

    Args:
        row: Fields of the interaction log (see ``INTERACTION_COLUMNS``).
        fill: Generate a missing ``id`` (uuid4 hex) and ``timestamp`` (now, UTC). Without it a missing
            timestamp is an error and a missing id is derived from the row's content, so loading one file twice
            inserts its rows once.

    Returns:
        The row with every column; ``timestamp`` an ISO 8601 UTC string, ``metadata`` text. Its JSON line
        encodes as UTF-8 (no text holds a NUL or a lone surrogate).

    Raises:
        ValueError: A field is unknown, missing or of the wrong type or range, or holds unstorable text (the
            message names the field, never a text value).
    """
    unknown = sorted(set(row) - set(INTERACTION_COLUMNS))
    if unknown:
        raise ValueError(f"unknown fields {[u[:64] for u in unknown][:10]}")
    out: dict[str, Any] = {c: row.get(c) for c in INTERACTION_COLUMNS}
    if isinstance(out["task_type"], str):
        check_text("task_type", out["task_type"])  # before check_task_type, whose message quotes the value
    out["task_type"] = check_task_type(out["task_type"])
    for name in ("prompt", "response", "model_version", "user_id", "key_id", "correction"):
        if out[name] is not None and not isinstance(out[name], str):
            raise ValueError(f"{name} must be text, got {type(out[name]).__name__}")
    if out["user_id"] is not None and len(out["user_id"]) > MAX_USER_ID_CHARS:
        raise ValueError(f"user_id is {len(out['user_id'])} characters long; at most {MAX_USER_ID_CHARS} are allowed")
    feedback = out["user_feedback"]
    if feedback is not None and (isinstance(feedback, bool) or not isinstance(feedback, int) or not 1 <= feedback <= 5):
        raise ValueError(f"user_feedback must be an integer 1-5 or null, got {feedback!r}")
    for name in ("success", "task_success"):
        if out[name] is not None and not isinstance(out[name], bool):
            raise ValueError(f"{name} must be true, false or null, got {type(out[name]).__name__}")
    conf = out["confidence"]
    if conf is not None and (isinstance(conf, bool) or not isinstance(conf, int | float) or not math.isfinite(conf)):
        raise ValueError(f"confidence must be a finite number or null, got {conf!r}"[:200])
    for name, v in (("latency_ms", out["latency_ms"]), ("tokens_used", out["tokens_used"])):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be a non-negative integer or null, got {v!r}"[:200])
    if out["metadata"] is not None and not isinstance(out["metadata"], str):
        _check_json_strings(out["metadata"])
        try:
            out["metadata"] = json.dumps(out["metadata"], sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be text or JSON-serialisable: {exc}"[:200]) from None
    if out["request"] is not None:
        _request(out)
    out["timestamp"] = _timestamp(out["timestamp"], fill=fill)
    if out["id"] is None:  # a correction or request counts only when given: older files keep their ids
        content = {k: v for k, v in out.items() if v is not None or k not in ("correction", "request")}
        out["id"] = uuid.uuid4().hex if fill else "h" + key_digest(json.dumps(content, sort_keys=True))[:31]
    if not isinstance(out["id"], str) or not out["id"]:
        raise ValueError(f"id must be non-empty text, got {type(out['id']).__name__}")
    for name, value in out.items():  # every text column, including ones added to the schema later
        if isinstance(value, str):
            check_text(name, value)
    return out


def _request(out: dict[str, Any]) -> None:
    """Check the whole request (``{"messages": [...], <sampling parameters>}``, text or an object) and store it as
    JSON text; its last user message is the prompt (filled in when the row has none, else they must agree)."""
    try:
        _, last = context_and_prompt(logged_messages(out["request"]))
    except ChatFormatError as exc:
        raise ValueError(f"request: {exc}") from None
    if out["prompt"] is None:
        out["prompt"] = last
    elif out["prompt"] != last:
        raise ValueError("prompt must be the request's last user message (leave prompt out to take it from there)")
    if not isinstance(out["request"], str):
        _check_json_strings(out["request"])
        try:
            out["request"] = json.dumps(out["request"], sort_keys=True, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"request must be JSON-serialisable: {exc}"[:200]) from None


def _timestamp(value: Any, *, fill: bool) -> str:
    if value is None and not fill:
        raise ValueError("timestamp is missing")
    value = datetime.now(UTC) if value is None else value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value[:40]!r} is not ISO 8601") from None
    if not isinstance(value, datetime):
        raise ValueError(f"timestamp must be a datetime or ISO 8601 text, got {type(value).__name__}")
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # naive means UTC
    return value.isoformat()


def db_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A checked row as the warehouse takes it (``timestamp`` a datetime)."""
    return {**row, "timestamp": datetime.fromisoformat(row["timestamp"])}


def rejected_line(segment: str, reason: str, *, row: Mapping[str, Any] | None = None, line: bytes | None = None) -> bytes:
    """One JSON line of the rejected file: when, from which segment, why, and the row (or the unreadable line).

    Args:
        segment: The spool segment the row came from.
        reason: Why it was refused: an exception type and the driver's first message line, never parameters.
        row: The refused row, kept so that a person can repair and import it.
        line: The raw spooled line that could not be read (decoded with replacement characters).
    """
    entry: dict[str, Any] = {"rejected_at": datetime.now(UTC).isoformat(), "segment": segment, "reason": reason}
    if row is not None:
        entry["row"] = dict(row)
    if line is not None:
        entry["line"] = line.decode("utf-8", "replace")
    # ensure_ascii: an unreadable line may hold anything; the rejected file stays valid UTF-8 JSON lines
    return (json.dumps(entry, ensure_ascii=True, default=str) + "\n").encode()


def segments(spool_dir: Path) -> list[Path]:
    """The spool's segments, oldest first."""
    return sorted(spool_dir.glob(SEGMENT.replace("{:08d}", "*")))


def spool_files(spool_dir: Path) -> list[Path]:
    """The files that hold spooled rows: the segments, oldest first, then the active file if there is one."""
    return segments(spool_dir) + [p for p in [spool_dir / ACTIVE] if p.exists()]


def count_lines(path: Path) -> int:
    """Newline-terminated lines of a file, read 1 MiB at a time."""
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def read_spool(spool_dir: str | Path) -> dict[str, Any]:
    """What a spool folder holds, read from its files (for ``ftops spool``; takes no lock, changes nothing).

    Args:
        spool_dir: The spool folder.

    Returns:
        ``spooled_rows`` and ``spool_bytes`` (active file and segments), ``segments``, the ``rejected_file`` and
        ``rejected``: per rejected line its ``id`` (None for an unreadable line), ``rejected_at``, ``segment``
        and ``reason``, with control characters removed (never the prompt or any other row text).
    """
    spool_dir = Path(spool_dir)
    files = spool_files(spool_dir)
    rows = sum(count_lines(p) for p in files)
    rejected: list[dict[str, Any]] = []
    path = spool_dir / REJECTED
    if path.exists():
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    entry = json.loads(raw)
                    row = entry.get("row") or {}
                    shown = {"id": row.get("id"), "rejected_at": entry.get("rejected_at"),
                             "segment": entry.get("segment"), "reason": entry.get("reason")}  # fmt: skip
                except (ValueError, AttributeError):  # a line written by an older version: the raw line itself
                    shown = {"id": None, "rejected_at": None, "segment": None, "reason": f"unreadable line {n}"}
                rejected.append({k: printable(v, keep_breaks=False)[:300] if v is not None else None
                                 for k, v in shown.items()})  # fmt: skip
    return {"spool_dir": str(spool_dir), "spooled_rows": rows, "spool_bytes": sum(p.stat().st_size for p in files),
            "segments": len(segments(spool_dir)),
            "rejected_file": str(path), "rejected": rejected}  # fmt: skip
