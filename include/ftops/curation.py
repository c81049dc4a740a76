"""Curation: from raw interaction logs to a scrubbed, deduplicated, diverse, split chat dataset.

Every row read is accounted for: it is accepted, filtered with a reason code, or quarantined with a reason
(malformed rows). ``Curated.accounting`` holds the counts and they add up to the rows read.

Order of work, cheapest first so that only survivors are embedded:
quarantine malformed rows → quality filters → scrub PII/secrets → exact duplicates (normalised text hash) →
embed (cached) → quality-ordered greedy diversity selection with FAISS → stable hash split.

Quality order for selection: rating (high first), then success confidence (high first), then latency (low
first), then id, so that when two prompts are near duplicates the better-rated, faster answer is kept.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftops.config import CurationConfig
from ftops.scrub import scrub

if TYPE_CHECKING:
    import pandas as pd

    from ftops.embedding import Embedder, EmbeddingCache

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "task_type", "prompt", "response", "user_feedback", "success", "latency_ms")


@dataclass
class Curated:
    """The result of curating one task type's batch."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    rows_read: int
    accounting: Counter[str] = field(default_factory=Counter)  # "accepted", "filtered:<rule>", "quarantined:<why>"
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    scrubbed: Counter[str] = field(default_factory=Counter)
    embedded_new: int = 0
    diversity_score: float = 0.0

    def balanced(self) -> bool:
        """True when accepted + filtered + quarantined equals the rows read."""
        return sum(self.accounting.values()) == self.rows_read


def normalise_text(text: str) -> str:
    """Unicode-normalised, lowercased, whitespace-collapsed text with edge punctuation removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip(" .!?,;:")


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()


def split_of(prompt: str, test_share: float) -> str:
    """``"test"`` or ``"train"`` from a hash of the normalised prompt: an example never changes split."""
    bucket = int(text_hash(prompt)[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_share else "train"


def _malformed_reason(row: dict[str, Any], max_prompt_chars: int) -> str | None:
    for col in ("prompt", "response"):
        value = row.get(col)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"null_{col}"
        if not isinstance(value, str):
            return f"{col}_not_text"
        if not value.strip():
            return f"empty_{col}"
        if "\x00" in value:
            return f"nul_byte_in_{col}"
    if len(row["prompt"]) > max_prompt_chars:
        return "prompt_too_long"
    rating = row.get("user_feedback")
    if rating is not None and not (isinstance(rating, float) and math.isnan(rating)):
        if isinstance(rating, bool) or not isinstance(rating, int | float) or rating != int(rating):
            return "rating_not_integer"
        if not 1 <= rating <= 5:
            return "rating_out_of_range"
    latency = row.get("latency_ms")
    if latency is not None and not (isinstance(latency, float) and math.isnan(latency)) and latency < 0:
        return "negative_latency"
    return None


def _filter_reason(row: dict[str, Any], cfg: CurationConfig) -> str | None:
    rating = row.get("user_feedback")
    if rating is None or (isinstance(rating, float) and math.isnan(rating)):
        return "no_rating"
    if rating < cfg.quality_threshold:
        return "low_rating"
    if not bool(row.get("success")):
        return "failed_call"
    response: str = row["response"]
    if len(response) < cfg.min_response_chars:
        return "response_too_short"
    if len(response) > cfg.max_response_chars:
        return "response_too_long"
    lowered = response.lower()
    if any(marker in lowered for marker in cfg.error_markers):
        return "error_text"
    latency = row.get("latency_ms")
    if latency is not None and not (isinstance(latency, float) and math.isnan(latency)) and latency > cfg.max_latency_ms:
        return "too_slow"
    return None


def _quality_key(row: dict[str, Any]) -> tuple[float, float, float, str]:
    confidence = row.get("confidence")
    confidence = 0.0 if confidence is None or confidence != confidence else float(confidence)
    latency = row.get("latency_ms")
    latency = 0.0 if latency is None or latency != latency else float(latency)
    return (-float(row["user_feedback"]), -confidence, latency, str(row["id"]))


def to_example(prompt: str, response: str) -> dict[str, Any]:
    """A chat-format training example (the OpenAI fine-tuning JSONL shape)."""
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}


def curate_frame(
    frame: pd.DataFrame,
    cfg: CurationConfig,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
) -> Curated:
    """Curate one task type's raw rows.

    Args:
        frame: Raw log rows (the interaction log schema).
        cfg: Curation settings.
        embedder: Prompt embedder for diversity selection.
        cache: Embedding cache; without one every survivor is embedded.

    Returns:
        The curated dataset with its accounting.

    Raises:
        KeyError: A required column is missing (schema drift), naming the columns.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"interaction log is missing columns {missing}; found {sorted(frame.columns)}")
    records: list[dict[str, Any]] = frame.to_dict("records")
    result = Curated(train=[], test=[], rows_read=len(records))

    survivors: list[dict[str, Any]] = []
    for row in records:
        reason = _malformed_reason(row, cfg.max_prompt_chars)
        if reason is None:
            reason = _filter_reason(row, cfg)
            if reason is not None:
                result.accounting[f"filtered:{reason}"] += 1
                continue
            cleaned_prompt, cleaned_response = scrub(row["prompt"]), scrub(row["response"])
            if cleaned_prompt.unsafe or cleaned_response.unsafe:
                reason = "unremovable_secret"
            else:
                result.scrubbed.update(cleaned_prompt.counts)
                result.scrubbed.update(cleaned_response.counts)
                survivors.append({**row, "prompt": cleaned_prompt.text, "response": cleaned_response.text})
                continue
        result.accounting[f"quarantined:{reason}"] += 1
        safe_row = {k: (scrub(v).text if isinstance(v, str) else v) for k, v in row.items()}
        result.quarantined.append({"row_id": row.get("id"), "task_type": row.get("task_type"),
                                   "reason": reason, "row": safe_row})  # fmt: skip

    survivors.sort(key=_quality_key)
    unique: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in survivors:
        key = text_hash(row["prompt"])
        if key in seen:
            result.accounting["filtered:duplicate"] += 1
            continue
        seen.add(key)
        unique.append(row)

    selected: list[int] = []
    if unique:
        from ftops.embedding import embed_with_cache
        from ftops.selection import diversity_score, select_diverse

        prompts = [r["prompt"] for r in unique]
        if cache is not None:
            vectors, result.embedded_new = embed_with_cache(embedder, prompts, cache)
        else:
            vectors, result.embedded_new = embedder.embed(prompts), len(prompts)
        selected = select_diverse(vectors, cfg.target_size, cfg.diversity_threshold)
        result.diversity_score = diversity_score(vectors[selected]) if len(selected) > 1 else 0.0
        chosen = set(selected)
        # A rejected candidate is either too similar to a kept one, or came after the target was reached.
        # Candidates after the last kept one were never examined when the target was reached.
        last = selected[-1] if len(selected) == cfg.target_size else len(unique)
        for i in range(len(unique)):
            if i not in chosen:
                result.accounting["filtered:near_duplicate" if i < last else "filtered:over_target"] += 1

    for i in selected:
        row = unique[i]
        example = to_example(row["prompt"], row["response"])
        (result.test if split_of(row["prompt"], cfg.test_split) == "test" else result.train).append(example)
    result.accounting["accepted"] += len(selected)
    log.info(
        "Curated %d rows: %d accepted (%d train, %d test), %s",
        result.rows_read, len(selected), len(result.train), len(result.test),
        ", ".join(f"{k}={v}" for k, v in sorted(result.accounting.items()) if k != "accepted") or "nothing dropped",
    )  # fmt: skip
    return result


def summarise_accounting(accounting: Counter[str] | dict[str, int]) -> dict[str, int]:
    """Plain sorted dict of the counts (for XCom, metadata and logs)."""
    return {k: int(v) for k, v in sorted(accounting.items())}


def examples_of(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, reference response) pairs of chat examples."""
    pairs = []
    for row in rows:
        msgs = row["messages"]
        prompt = next(m["content"] for m in msgs if m["role"] == "user")
        answer = next(m["content"] for m in reversed(msgs) if m["role"] == "assistant")
        pairs.append((prompt, answer))
    return pairs
