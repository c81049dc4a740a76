"""Training data: the validation split carved from a dataset version's train split, and the tokenised
:class:`datasets.Dataset` the Trainer reads.

The validation split is chosen by a stable hash of each example's prompt (every turn but the final reply),
so it is the same on every run and retry, and examples that share a prompt fall on the same side: a
repeated prompt cannot leak from training into validation. It is carved from the *train* split only; the
test split stays untouched for the gate. Too small a validation split (fewer than
:data:`MIN_VALIDATION_EXAMPLES`) would make per-epoch losses noise, so training then uses every example
and says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.core.chat import IGNORE_INDEX, ChatFormatError, EncodedExample, encode_conversation

if TYPE_CHECKING:
    import datasets


logger = logging.getLogger(__name__)
MIN_VALIDATION_EXAMPLES = 10
"""Fewest validation examples worth evaluating on; with fewer, training uses every example."""


class TrainingError(ValueError):
    """Training cannot succeed as configured: bad input data, a diverged (NaN/inf) loss, out of memory.

    A ``ValueError``, so the pipeline does not retry it: the same data and settings fail the same way.
    """


@dataclass(frozen=True)
class ValidationSplit:
    """The training rows, the validation rows carved from them, and why there are none (if so)."""

    train: list[Mapping[str, Any]]
    validation: list[Mapping[str, Any]]
    note: str = ""  # non-empty: validation is off, and this says why


def prompt_bucket(row: Mapping[str, Any]) -> float:
    """A number in [0, 1] from a hash of the row's prompt turns (stable across runs and machines)."""
    messages = row.get("messages") or []
    prompt = [{"role": m.get("role"), "content": m.get("content")} for m in messages[:-1] if isinstance(m, Mapping)]
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def split_validation(
    rows: Sequence[Mapping[str, Any]], share: float, *, min_examples: int = MIN_VALIDATION_EXAMPLES
) -> ValidationSplit:
    """Carve a validation split (about ``share`` of the rows) from training rows, by a hash of each prompt.

    Args:
        rows: A dataset version's train split (never its test split).
        share: Fraction for validation, in [0, 1); 0 turns validation off.
        min_examples: With fewer validation rows than this, validation is off and every row trains.

    Returns:
        The split; ``note`` says why validation is off, when it is.
    """
    if share <= 0:
        return ValidationSplit(list(rows), [], "validation_share is 0")
    train: list[Mapping[str, Any]] = []
    validation: list[Mapping[str, Any]] = []
    for row in rows:
        (validation if prompt_bucket(row) < share else train).append(row)
    if len(validation) < min_examples or not train:
        note = f"{len(validation)} of {len(rows)} rows fall in validation, fewer than {min_examples}"
        logger.warning("No validation split (%s): training on all %d rows", note, len(rows))
        return ValidationSplit(list(rows), [], note)
    logger.info("Validation split: %d rows train, %d validate (share %.2f)", len(train), len(validation), share)
    return ValidationSplit(train, validation)


def rows_fingerprint(rows: Sequence[Mapping[str, Any]], *parts: object) -> str:
    """A digest of rows' content and the settings that shape their tokens (a cache key)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode())
    for row in rows:
        digest.update(json.dumps(row.get("messages"), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def tokenized_dataset(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_seq_len: int, *, name: str, cache_dir: Path | None,
    cache_key: str = "",
) -> datasets.Dataset:  # fmt: skip
    """Rows as a :class:`datasets.Dataset` of ``input_ids``/``labels``/``prompt_len``, tokenised by ``map``.

    Examples whose reply lies wholly beyond ``max_seq_len`` are dropped (logged). With ``cache_dir`` the
    tokenised table is an Arrow file there, keyed by ``cache_key`` (content, tokenizer, length): a resumed run
    maps nothing again.

    Raises:
        TrainingError: A row is not a chat conversation, or no example is left.
    """
    import datasets

    datasets.disable_progress_bars()  # progress is logged as lines, not tqdm bars

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "prompt_len": []}
        for i, messages in zip(indices, batch["messages"], strict=True):
            try:
                encoded = encode_conversation(tokenizer, messages, max_seq_len)
            except (KeyError, TypeError, ChatFormatError) as exc:
                raise TrainingError(f"{name} row {i} is not a chat conversation: {exc}") from exc
            if any(label != IGNORE_INDEX for label in encoded.labels):
                out["input_ids"].append(encoded.input_ids)
                out["labels"].append(encoded.labels)
                out["prompt_len"].append(encoded.prompt_len)
        return out

    try:
        raw = datasets.Dataset.from_list([{"messages": row["messages"]} for row in rows])
    except (KeyError, TypeError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise TrainingError(f"{name} rows are not chat conversations: {exc}") from exc
    cache = str(cache_dir / f"tokenized-{name}-{cache_key}.arrow") if cache_dir is not None and cache_key else None
    encoded = raw.map(encode, batched=True, with_indices=True, remove_columns=raw.column_names,
                      cache_file_name=cache, new_fingerprint=cache_key or None)  # fmt: skip
    dropped = len(rows) - len(encoded)
    if dropped:
        logger.warning("Dropped %d %s examples whose reply lies beyond max_seq_len=%d", dropped, name, max_seq_len)
    if len(encoded) == 0:
        raise TrainingError(f"no {name} examples")
    return encoded


def as_examples(batch: Sequence[Mapping[str, Any]]) -> list[EncodedExample]:
    """Dataset items (dicts) as the encoded examples the collators take."""
    return [EncodedExample(list(b["input_ids"]), list(b["labels"]), int(b["prompt_len"])) for b in batch]


MAX_CLUSTER_COPIES = 20  # a cluster of 5 rows in 5 000 must not become 200 copies of the same 5 answers


def oversample_cluster(
    rows: Sequence[Mapping[str, Any]], sources: Sequence[str] | None, row_ids: Sequence[str] | None,
    cluster_ids: Sequence[str], share: float,
) -> tuple[list[Mapping[str, Any]], list[str] | None, int]:
    """Repeat the train rows of a failure cluster until they are at least ``share`` of the rows.

    An error-pattern fine-tune is about that cluster: its corrected or relabelled prompts would be a handful among
    thousands of rows otherwise. Every row of the cluster gets the same number of copies ``k`` (the smallest with
    ``c·k / (others + c·k) >= share``, at most :data:`MAX_CLUSTER_COPIES`).

    Args:
        rows: The train split.
        sources: ``sources.train`` aligned with ``rows`` (None: all served); repeated with the rows.
        row_ids: ``lineage.train``: the log row id behind each row (None: the version has no lineage).
        cluster_ids: The cluster's log row ids, as the governor recorded them.
        share: ``training.cluster_share``.

    Returns:
        (rows, sources, how many distinct cluster rows the train split holds).
    """
    wanted = {str(i) for i in cluster_ids}
    if row_ids is None or len(row_ids) != len(rows) or not wanted or share <= 0:
        return list(rows), None if sources is None else list(sources), 0
    inside = [i for i, rid in enumerate(row_ids) if str(rid) in wanted]
    if not inside:
        return list(rows), None if sources is None else list(sources), 0
    others = len(rows) - len(inside)
    copies = min(MAX_CLUSTER_COPIES, max(1, math.ceil(share * others / (len(inside) * (1 - share)))))
    extra = [i for i in inside for _ in range(copies - 1)]
    out_rows = [*rows, *(rows[i] for i in extra)]
    out_sources = None if sources is None else [*sources, *(sources[i] for i in extra)]
    logger.info("Failure cluster: %d of %d train rows are its prompts, each trained %d times (%.0f%% of %d rows)",
                len(inside), len(rows), copies, 100 * len(inside) * copies / len(out_rows), len(out_rows))  # fmt: skip
    return out_rows, out_sources, len(inside)


def repeat_by_source(
    rows: Sequence[Mapping[str, Any]], sources: Sequence[str] | None, weights: Mapping[Any, int]
) -> list[Mapping[str, Any]]:
    """Each training row repeated by the weight of its target's source (``served``, ``correction``, ``teacher``).

    Weights are integers, so a weight is an exact number of copies (a correction at 3 trains three times as
    often as a served answer at 1). Copies share their prompt, so a validation split by prompt hash puts them
    all on the same side.

    Args:
        rows: A dataset version's train split.
        sources: Its metadata's ``sources.train``, aligned with ``rows``; ``None`` (older versions): all served.
        weights: ``training.source_weights``; a source missing there weighs 1.

    Returns:
        The rows, each followed by its extra copies.

    Raises:
        TrainingError: ``sources`` does not have one entry per row.
    """
    if sources is None:
        sources = ["served"] * len(rows)
    if len(sources) != len(rows):
        raise TrainingError(f"metadata sources.train has {len(sources)} entries for {len(rows)} train rows")
    out: list[Mapping[str, Any]] = []
    counts: dict[str, int] = {}
    for row, source in zip(rows, sources, strict=True):
        out.extend([row] * weights.get(source, 1))
        counts[source] = counts.get(source, 0) + 1
    logger.info("Source weights: %s -> %d training rows from %d",
                ", ".join(f"{n} {s} x{weights.get(s, 1)}" for s, n in sorted(counts.items())), len(out), len(rows))  # fmt: skip
    return out
