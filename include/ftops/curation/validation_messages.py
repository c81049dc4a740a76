"""Great Expectations results turned into what a person reads: one line per failed expectation, with the
rows it failed on counted and a few unexpected values quoted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


SAMPLES = 5  # unexpected values quoted in a failure message
TEXT_COLUMNS = frozenset({"prompt", "response", "user_id"})  # a user's text is counted, never quoted


# -- failure messages ---------------------------------------------------------------------------------------
def result_entry(key: str, label: str | None = None, **extra: Any) -> dict[str, Any]:
    """Expectation meta that names the check, so a failed result can be described in words."""
    return {"check": key, "label": label or key, **extra}


def _exception_message(info: Any) -> str | None:
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))[:200]
    for value in info.values():  # keyed by metric when several metrics raised
        message = _exception_message(value)
        if message:
            return message
    return None


def rows_text(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_failure(result: Any, hints: dict[str, str]) -> str:
    """One sentence for a failed expectation, with its observed value."""
    config = result.expectation_config
    kwargs, meta, res = config.kwargs, config.meta or {}, result.result or {}
    check = meta.get("check", config.type)
    label = meta.get("label", f"{config.type}({kwargs.get('column', '')})")
    hint = f" ({hints[check]})" if hints.get(check) else ""
    error = _exception_message(result.exception_info)
    if error:
        return f"{label}: could not be evaluated: {error}"
    observed = res.get("observed_value")
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    unexpected = int(res.get("unexpected_count") or 0)
    elements = int(res.get("element_count") or 0)
    samples = [_fmt(v) for v in (res.get("partial_unexpected_list") or [])[:SAMPLES] if v is not None]
    if kwargs.get("column") in TEXT_COLUMNS:  # the message goes to task logs, which erasure cannot reach
        samples = []
    example = f", e.g. {', '.join(samples)}" if samples else ""
    if check == "rows":
        bound = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
        return f"row count {observed} outside {bound}{hint}"
    if check == "columns":
        missing = res.get("details", {}).get("mismatched", {}).get("missing", [])
        return f"required columns missing: {', '.join(missing)} (found: {', '.join(observed or [])})"
    if check == "malformed_share":
        share = unexpected / elements if elements else 0.0
        return f"malformed share {share:.2f} > ceiling {meta['ceiling']:.2f}{hint}"
    if check == "tolerance":  # a mostly-expectation on the malformed tolerance
        share = float(res.get("unexpected_percent") or 0) / 100
        return f"{label} in {share:.1%} of rows > {meta['ceiling']:.1%} allowed{example}"
    if check == "task_type":
        counts = res.get("partial_unexpected_counts") or []
        values = ", ".join(f"{c['value']} ({c['count']})" for c in counts[:SAMPLES])
        return f"{label} in {rows_text(unexpected)}: {values}"
    if check == "leaks":
        return f"{label}: {hints.get(check) or rows_text(unexpected)}"
    if check == "test_share":
        shown = f"{observed:.3f}" if isinstance(observed, float) else "undefined (no rows)"
        return f"test share {shown} outside {lo:.2f}..{hi:.2f}"
    if check == "splits":
        missing = ", ".join(map(str, res.get("partial_missing_list") or [])) or "none"
        extra = ", ".join(map(str, res.get("partial_unexpected_list") or []))
        return f"split missing: {missing} (need both train and test)" + (
            f"; unexpected splits: {extra}" if extra else ""
        )
    if check == "near_duplicates":
        if not isinstance(observed, float):
            return f"max cross-split similarity undefined (no rows), must be < {hi:.2f}"
        return (
            f"max cross-split similarity {observed:.3f} >= diversity threshold {hi:.2f}: "
            "the test split holds a near-duplicate of a training example"
        )
    if check == "response_chars":
        return f"{label} in {rows_text(unexpected)}{example}"
    if check in ("prompt_null", "prompt_unique", "response_null"):  # no text in messages: they reach task logs
        return f"{label} in {rows_text(unexpected)}"
    if "unexpected_count" in res:
        return f"{label}: {unexpected} of {rows_text(elements)} unexpected{example}"
    return f"{label}: observed {observed}"
