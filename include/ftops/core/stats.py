"""Statistics shared by evaluation, the canary and serving: one definition of a percentile."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by linear interpolation between the closest ranks.

    The same definition as ``numpy.quantile``'s default ("linear"), so p50 of an even count is the mean of
    the middle two values.

    Args:
        values: The sample; need not be sorted.
        q: The quantile, e.g. ``0.95`` for p95.

    Returns:
        The quantile, or NaN for an empty sample.

    Raises:
        ValueError: ``q`` is outside [0, 1].
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
