"""Where a log row's training target comes from, in order of trust: its ``correction`` (a user's or a review
tool's right answer), else a teacher's answer (``teacher_answer``, a column a relabelling step may add to the
batch before curation), else the served ``response`` when the row passes the good-row rules
(:func:`ftops.curation.rules.filter_reason`).

So a failed or low-rated call that has a better answer becomes an example with that answer as its target, and
the pair (the better answer chosen, the served one rejected) is kept for preference training. A correction or
teacher answer must pass the rules that apply to answers (length, error text) like a served one; one that does
not is counted in ``Curated.target_rejections`` (``correction_too_short``, ``teacher_error_text``, …) and the
next source is tried. Every text is scrubbed (PII, secrets) before it is kept, the turns before the prompt too (the
logged request's system prompt and earlier turns: a candidate's ``context``, JSON).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ftops.core.chat import context_and_prompt, logged_messages
from ftops.core.config import CurationConfig
from ftops.curation.rules import (
    answer_problem,
    as_utc,
    filter_reason,
    is_missing,
    malformed_reason,
    normalise_text,
    user_key,
)
from ftops.curation.scrub import scrub

# Target sources, most trusted first; ``served`` is the model's own answer.
SOURCES = ("correction", "teacher", "served")
# The frame's column that holds each non-served target (``teacher_answer`` is optional: added before curation).
TARGET_COLUMNS = {"correction": "correction", "teacher": "teacher_answer"}


@dataclass(frozen=True)
class Target:
    """A row's training target, raw (scrubbed when the row becomes a candidate)."""

    text: str
    source: str  # one of SOURCES
    rejected: str | None = None  # the served answer it replaces when that differs: a preference pair's rejected


def target_of(row: dict[str, Any], cfg: CurationConfig, rejections: Counter[str],
              trusted: frozenset[str] = frozenset()) -> tuple[Target | None, str | None]:  # fmt: skip
    """The row's training target in order of trust, or None and the reason it is filtered.

    A correction or teacher answer that fails :func:`~ftops.curation.rules.answer_problem` is counted in ``rejections`` and the next
    source is tried; a row without a usable target is filtered with the served answer's reason (``low_rating``,
    ``failed_call``, …), or, when it carried a better answer that the answer rules rejected, with the first such
    rejection (``correction_too_short``: why a corrected row still did not become an example).
    """
    served_problem = filter_reason(row, cfg, trusted)
    first_rejection: str | None = None
    for source in SOURCES[:-1]:
        text = row.get(TARGET_COLUMNS[source]) if source in cfg.target_sources else None
        if is_missing(text) or not isinstance(text, str) or not text.strip():
            continue
        problem = answer_problem(text, cfg)
        if problem:
            rejections[f"{source}_{problem}"] += 1
            first_rejection = first_rejection or f"{source}_{problem}"
            continue
        same = normalise_text(text) == normalise_text(str(row["response"]))
        if same and served_problem is None:
            break  # the model already answered this way: its own (served) answer is the target
        return Target(text, source, None if same else str(row["response"])), None
    if served_problem is None:
        return Target(str(row["response"]), "served"), None
    return None, first_rejection or served_problem


def assign_targets(records: Sequence[dict[str, Any]], outcome: dict[int, str], cfg: CurationConfig,
                   future_after: datetime | None, rejections: Counter[str],
                   trusted: frozenset[str] = frozenset()) -> dict[int, Target]:  # fmt: skip
    """Quarantine malformed rows and filter rows without a target (into ``outcome``); the others' targets.
    ``trusted``: model versions whose unrated answers are targets (:func:`~ftops.curation.rules.filter_reason`)."""
    targets: dict[int, Target] = {}
    for i, row in enumerate(records):
        if i in outcome:
            continue
        if reason := malformed_reason(row, cfg, future_after):
            outcome[i] = f"quarantined:{reason}"
            continue
        target, reason = target_of(row, cfg, rejections, trusted)
        if target is None:
            outcome[i] = f"filtered:{reason}"
        else:
            targets[i] = target
    return targets


def candidate_of(row: dict[str, Any], index: int, target: Target) -> tuple[dict[str, Any] | None, Counter[str]]:
    """The row as a scrubbed curation candidate with its target, and what scrubbing replaced; None when a text
    holds a secret that cannot be removed (the row is then quarantined as ``unremovable_secret``)."""
    texts = [scrub(row["prompt"]), scrub(target.text)]
    if target.rejected is not None:
        texts.append(scrub(target.rejected))
    request = row.get("request")  # validated by malformed_reason
    turns = [] if is_missing(request) or request == "" else context_and_prompt(logged_messages(request))[0]
    context = [scrub(t["content"]) for t in turns]
    counts: Counter[str] = Counter()
    if any(t.unsafe for t in texts + context):
        return None, counts
    for t in texts + context:
        counts.update(t.counts)
    rating: Any = row.get("user_feedback")
    return {
        "row_id": str(row["id"]), "index": index, "task_type": row.get("task_type"), "prompt": texts[0].text,
        "response": texts[1].text, "user_key": user_key(row.get("user_id")),
        "user_feedback": None if is_missing(rating) else float(rating),
        "confidence": None if is_missing(row.get("confidence")) else float(row["confidence"]),
        "latency_ms": None if is_missing(row.get("latency_ms")) else float(row["latency_ms"]),
        "timestamp": as_utc(row.get("timestamp")),
        "model_version": None if is_missing(row.get("model_version")) else str(row["model_version"]),
        "source": target.source, "rejected": texts[2].text if len(texts) > 2 else None,
        "context": json.dumps([{"role": t["role"], "content": c.text} for t, c in zip(turns, context, strict=True)],
                              ensure_ascii=False) if turns else None,
    }, counts  # fmt: skip
