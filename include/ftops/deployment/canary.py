"""Canary judgement: compare a canary's live metrics with the design's thresholds and the champion's.

Actions: ``hold`` (not enough traffic or time yet), ``promote`` (observed long enough and healthy) and
``rollback`` (error rate or p95 latency over its limit, judged once there are enough calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ftops.core.config import CanaryConfig

Action = Literal["hold", "promote", "rollback"]


@dataclass(frozen=True)
class CanaryVerdict:
    action: Action
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    canary: Mapping[str, float], champion: Mapping[str, float], age_hours: float, cfg: CanaryConfig
) -> CanaryVerdict:
    """Judge a canary from its live metrics (``requests``, ``error_rate``, ``latency_p95_ms``).

    Args:
        canary: The canary's metrics since it started serving.
        champion: The champion's metrics over the same window (for the record and the comparison).
        age_hours: How long the canary has served.
        cfg: Canary thresholds.
    """
    n = int(canary.get("requests", 0))
    if n < cfg.min_requests:
        return CanaryVerdict("hold", f"{n} canary calls so far, {cfg.min_requests} needed to judge")
    err, p95 = float(canary["error_rate"]), float(canary["latency_p95_ms"])
    if err >= cfg.max_error_rate:
        return CanaryVerdict("rollback", f"error rate {err:.3f} ≥ {cfg.max_error_rate} over {n} calls "
                                         f"(champion {champion.get('error_rate', float('nan')):.3f})")  # fmt: skip
    if p95 >= cfg.max_latency_p95_ms:
        return CanaryVerdict("rollback", f"p95 latency {p95:.0f} ms ≥ {cfg.max_latency_p95_ms:.0f} ms over {n} calls")
    if age_hours < cfg.duration_hours:
        return CanaryVerdict("hold", f"healthy so far (error rate {err:.3f}, p95 {p95:.0f} ms) after "
                                     f"{age_hours:.1f} h of {cfg.duration_hours:g} h")  # fmt: skip
    return CanaryVerdict("promote", f"healthy for {age_hours:.1f} h over {n} calls: error rate {err:.3f}, "
                                    f"p95 {p95:.0f} ms")  # fmt: skip
