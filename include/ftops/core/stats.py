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


# -- proportions: intervals and sample sizes (pure Python: the normal approximation needs only erfc) ----------
def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_quantile(p: float) -> float:
    """The standard normal quantile: z with P(Z ≤ z) = ``p``.

    Acklam's rational approximation (relative error < 1.2e-9), refined by one Halley step on ``erfc``, so the
    result agrees with ``scipy.stats.norm.ppf`` to ~1e-15.

    Raises:
        ValueError: ``p`` is not strictly between 0 and 1.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if p < low or p > 1 - low:
        q = math.sqrt(-2 * math.log(p if p < low else 1 - p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)  # fmt: skip
        x = x if p < low else -x
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)  # fmt: skip
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p  # Halley refinement
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def wilson_interval(hits: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``hits / n`` at ``z`` (e.g. 1.96: each tail 2.5 %).

    Better than the Wald interval on small samples and near 0 or 1 (0 of 20 gives [0, 0.16], not [0, 0]).

    Returns:
        (lower, upper); (0, 1) for an empty sample.
    """
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_upper_bound(hits1: int, n1: int, hits2: int, n2: int, z: float) -> float:
    """Upper confidence bound of ``p1 - p2`` by Newcombe's hybrid score method (his method 10), from the two
    Wilson intervals: ``d + sqrt((u1 - p1)² + (p2 - l2)²)``; one-sided at the level of ``z``.

    Newcombe (1998, Statistics in Medicine 17:873) found it close to nominal coverage down to small samples
    and rates near 0 or 1, where the Wald interval is too narrow.

    Returns:
        The bound; 1.0 when either sample is empty (nothing is known).
    """
    if n1 <= 0 or n2 <= 0:
        return 1.0
    p1, p2 = hits1 / n1, hits2 / n2
    _, u1 = wilson_interval(hits1, n1, z)
    l2, _ = wilson_interval(hits2, n2, z)
    return p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def required_calls(p_base: float, min_effect: float, alpha: float, power: float) -> int:
    """Calls per side for a one-sided non-inferiority comparison of two proportions to show "not worse by
    ``min_effect``" with probability ``power`` when both truly are ``p_base``:
    ``n = (z(1 - alpha) + z(power))² · 2 · p_base · (1 - p_base) / min_effect²`` (normal approximation).

    Args:
        p_base: The rate both sides share (e.g. the champion's task success).
        min_effect: The harm that must be ruled out (absolute).
        alpha: One-sided level of the bound.
        power: Chance of ruling it out when there is no harm.

    Raises:
        ValueError: An argument is outside its range.
    """
    if not (0 < p_base < 1 and 0 < min_effect < 1 and 0 < alpha < 0.5 and 0.5 <= power < 1):
        raise ValueError(f"required_calls({p_base}, {min_effect}, {alpha}, {power}): an argument is out of range")
    z = normal_quantile(1 - alpha) + normal_quantile(power)
    return math.ceil(z * z * 2 * p_base * (1 - p_base) / (min_effect * min_effect))
