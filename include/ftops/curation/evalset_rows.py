"""The rows of an eval-set import, checked and scrubbed line by line, every line accounted for.

A team brings its labelled questions as JSON lines, ``{"prompt": ..., "reference": ...}`` or
``{"messages": [...], "reference": ...}`` (optionally ``"source"``: ``human`` or ``imported``, the default).
Each line is *accepted*, a *duplicate* (of an earlier line or of a row the eval set already holds: same prompt
after normalisation) or *rejected* with its line number and a reason. Prompt, messages and reference are
scrubbed of PII and secrets as curation scrubs a log row; a line with a secret that cannot be removed with
certainty is rejected. Reasons never quote the line: it may hold a person's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftops.core.text import check_text
from ftops.curation.rules import text_hash
from ftops.curation.scrub import scrub

MAX_PROMPT_CHARS = 20_000
MAX_REFERENCE_CHARS = 5_000
IMPORT_SOURCES = ("human", "imported")  # correction and teacher rows come from the loop, never from a file
_ROLES = ("system", "user", "assistant")


@dataclass
class ImportReport:
    """What became of each line of an import file."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # line numbers, 1-based
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    scrubbed: dict[str, int] = field(default_factory=dict)  # replacements by type
    lines: int = 0  # non-blank lines read

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "accepted": len(self.accepted), "duplicates": self.duplicates,
                "rejected": [{"line": n, "reason": r} for n, r in self.rejected], "scrubbed": self.scrubbed}  # fmt: skip


class RowError(ValueError):
    """A line that cannot be an eval-set row (the message is its reason)."""


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"{name} must be a non-empty string")
    check_text(name, value)
    if len(value) > limit:
        raise RowError(f"{name} is {len(value)} characters (at most {limit})")
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise RowError(f"messages[{i}] must be an object with a role in {_ROLES}")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}].content", MAX_PROMPT_CHARS)})
    if out[-1]["role"] != "user":
        raise RowError("the last message must be the user's question (the reference answers it)")
    return out


def parse_line(raw: str) -> dict[str, Any]:
    """One import line as an unscrubbed row ``{"prompt", "reference", "source"[, "messages"]}``.

    Raises:
        RowError: Not a JSON object, no question or reference, a bad source, unstorable or oversized text.
    """
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RowError(f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise RowError("not a JSON object")
    if ("prompt" in value) == ("messages" in value):
        raise RowError('needs exactly one of "prompt" or "messages"')
    row: dict[str, Any] = {"reference": _text(value.get("reference"), "reference", MAX_REFERENCE_CHARS)}
    source = value.get("source", "imported")
    if source not in IMPORT_SOURCES:
        raise RowError(f"source must be one of {IMPORT_SOURCES} in an import")
    row["source"] = source
    if "messages" in value:
        row["messages"] = _messages(value["messages"])
        row["prompt"] = row["messages"][-1]["content"]
    else:
        row["prompt"] = _text(value["prompt"], "prompt", MAX_PROMPT_CHARS)
    return row


def _scrubbed(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """The row with PII and secrets replaced; RowError when a secret cannot be removed with certainty."""
    found: dict[str, int] = {}

    def clean(text: str) -> str:
        result = scrub(text)
        if result.unsafe:
            raise RowError("holds a secret that cannot be removed with certainty (an unterminated private key)")
        for kind, n in result.counts.items():
            found[kind] = found.get(kind, 0) + n
        return result.text

    out = {"prompt": clean(row["prompt"]), "reference": clean(row["reference"]), "source": row["source"]}
    if "messages" in row:
        out["messages"] = [{"role": m["role"], "content": clean(m["content"])} for m in row["messages"]]
    for kind, n in found.items():
        counts[kind] = counts.get(kind, 0) + n
    return out


def question_key(row: Mapping[str, Any]) -> str:
    """What makes two eval-set rows the same question: the whole conversation, normalised."""
    turns = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    return text_hash("\n".join(f"{m['role']}: {m['content']}" for m in turns))


def parse_import(lines: Iterable[str | bytes], existing: Sequence[Mapping[str, Any]] = ()) -> ImportReport:
    """Check, scrub and de-duplicate the lines of an import file against each other and ``existing`` rows.

    Args:
        lines: The file's lines (bytes are decoded as UTF-8, line by line; blank lines are skipped, not counted).
        existing: The rows of the eval set's latest version (a line asking one of them again is a duplicate).

    Returns:
        The report: accepted rows in file order, duplicate and rejected line numbers.
    """
    report = ImportReport()
    seen = {question_key(r) for r in existing}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        report.lines += 1
        found: dict[str, int] = {}
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            row = _scrubbed(parse_line(text), found)
        except UnicodeDecodeError as exc:
            report.rejected.append((number, f"not UTF-8 (byte {exc.start})"))
            continue
        except (RowError, ValueError) as exc:  # ValueError: check_text's unstorable text
            report.rejected.append((number, str(exc)))
            continue
        key = question_key(row)
        if key in seen:
            report.duplicates.append(number)
            continue
        seen.add(key)
        report.accepted.append(row)
        for kind, n in found.items():
            report.scrubbed[kind] = report.scrubbed.get(kind, 0) + n
    return report
