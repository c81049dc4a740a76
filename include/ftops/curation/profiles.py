"""PII-free profiles of a raw batch and of a curated dataset: what the Great Expectations suites judge and
the Data Docs show, so no raw prompt ever reaches a validation result or a report.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ftops.curation.curate import examples_of
from ftops.curation.scrub import scrub

if TYPE_CHECKING:
    import pandas as pd


# -- profiles: what GX is allowed to see ------------------------------------------------------------------
def _values(frame: pd.DataFrame, column: str) -> Any:
    """The column as a numpy object array (iterating that is ~3x faster than a Series); None if absent."""
    return frame[column].to_numpy(dtype=object) if column in frame.columns else None


def _numbers(frame: pd.DataFrame, column: str) -> Any:
    """Float array of the column's numeric values; anything else (text, bools, missing) becomes NaN."""
    import numpy as np

    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    series = frame[column]
    if series.dtype.kind in "iuf":  # numpy and nullable (Int64, Float64) numbers
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return np.fromiter((_as_float(v) for v in series.to_numpy(dtype=object)), dtype="float64", count=len(series))


def _as_float(value: Any) -> float:
    import numpy as np

    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | decimal.Decimal | np.number):
        return math.nan
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):  # 10**400, Decimal("sNaN"), complex
        return math.nan


def _text_lengths(frame: pd.DataFrame, column: str) -> Any:
    """Length of each non-blank text; NaN where the value is missing, blank or not text."""
    import numpy as np

    values = _values(frame, column)
    if values is None:
        return np.full(len(frame), np.nan)
    return np.fromiter(
        (len(v) if isinstance(v, str) and v and not v.isspace() else np.nan for v in values),
        dtype="float64",
        count=len(values),
    )


def _safe_labels(values: Iterable[Any]) -> list[str | None]:
    """Labels with PII/secrets scrubbed (each distinct text scrubbed once); non-text shows its type only."""
    import pandas as pd

    cache: dict[str, str] = {}
    labels: list[str | None] = []
    for value in values:
        if isinstance(value, str):
            label = cache.get(value)
            if label is None:
                label = cache[value] = scrub(value).text[:200]
            labels.append(label)
        elif value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
            labels.append(None)
        else:
            labels.append(f"<{type(value).__name__}>")
    return labels


def raw_profile(frame: pd.DataFrame, reasons: Sequence[str | None]) -> pd.DataFrame:
    """The raw batch as GX may see it: no raw text, user id or metadata.

    Args:
        frame: The raw batch.
        reasons: Quarantine reason of each row, or None.

    Returns:
        One row per raw row: ``task_type`` and ``quarantine_reason`` (scrubbed labels), ``prompt_chars`` and
        ``response_chars`` (length of non-blank text, else null), ``user_feedback`` and ``latency_ms``
        (numbers, else null).

    Raises:
        ValueError: ``reasons`` does not have one entry per row.
    """
    import numpy as np
    import pandas as pd

    if len(reasons) != len(frame):
        raise ValueError(f"{len(reasons)} quarantine reasons for {len(frame)} rows")
    task_types = _values(frame, "task_type")
    if task_types is None:
        task_types = [None] * len(frame)
    return pd.DataFrame(
        {
            "task_type": pd.Series(_safe_labels(task_types), dtype=object),
            "quarantine_reason": pd.Series(_safe_labels(reasons), dtype=object),
            "prompt_chars": _text_lengths(frame, "prompt"),
            "response_chars": _text_lengths(frame, "response"),
            "user_feedback": _numbers(frame, "user_feedback"),
            "latency_ms": _numbers(frame, "latency_ms"),
        },
        index=np.arange(len(frame)),
    )


def curated_profile(
    train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]], max_cross_split_similarity: float | None = None
) -> pd.DataFrame:
    """The curated dataset as GX may see it: re-scrubbed prompts, response lengths, leak types, split.

    The text was scrubbed by curation; it is scrubbed again here, which changes nothing unless something
    leaked, so that a leak reaches neither Data Docs nor failure messages. ``leaks`` lists the types found.
    """
    import pandas as pd

    seen: dict[str, tuple[str, frozenset[str]]] = {}  # scrub is pure; responses repeat (refusals, templates)

    def rescrub(text: str) -> tuple[str, frozenset[str]]:
        if text not in seen:
            cleaned = scrub(text)
            unsafe = {"PRIVATE_KEY"} if cleaned.unsafe else set()
            seen[text] = ("[PRIVATE_KEY]" if cleaned.unsafe else cleaned.text, frozenset(cleaned.counts) | unsafe)
        return seen[text]

    rows: list[tuple[str | None, float, str, int, str | None]] = []
    for split, examples in (("train", train), ("test", test)):
        for prompt, response in examples_of(examples):
            safe_prompt, found = rescrub(prompt) if isinstance(prompt, str) else (None, frozenset())
            if isinstance(response, str):
                found = found | rescrub(response)[1]
            chars = float(len(response)) if isinstance(response, str) else math.nan
            rows.append((safe_prompt, chars, split, int(split == "test"), ",".join(sorted(found)) or None))
    profile = pd.DataFrame(
        {
            "prompt": pd.Series([r[0] for r in rows], dtype=object),
            "response_chars": pd.Series([r[1] for r in rows], dtype="float64"),
            "split": pd.Series([r[2] for r in rows], dtype=object),
            "is_test": pd.Series([r[3] for r in rows], dtype="int64"),
            "leaks": pd.Series([r[4] for r in rows], dtype=object),
        }
    )
    if max_cross_split_similarity is not None:
        profile["cross_split_similarity"] = float(max_cross_split_similarity)
    return profile
