"""The deployment gate: a candidate ships only if it beats the baseline on every configured criterion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ftops.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]  # every criterion, passed or failed, in words

    @property
    def decision(self) -> str:
        return "deploy" if self.passed else "archive"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "decision": self.decision}


def apply_gate(candidate: Mapping[str, float], baseline: Mapping[str, float], cfg: GateConfig) -> GateDecision:
    """Compare candidate and baseline metrics (``accuracy``, ``perplexity``, ``latency_p50_ms``, ``n``).

    Returns:
        The decision with one line per criterion, prefixed ``ok`` or ``FAIL``.
    """
    checks: list[tuple[bool, str]] = []
    n = int(candidate["n"])
    checks.append((n >= cfg.min_test_examples, f"test examples {n} (need ≥ {cfg.min_test_examples})"))
    gain = candidate["accuracy"] - baseline["accuracy"]
    checks.append((gain >= cfg.min_accuracy_gain - 1e-12,
                   f"accuracy {candidate['accuracy']:.3f} vs {baseline['accuracy']:.3f}: gain {gain:+.3f} "
                   f"(need ≥ {cfg.min_accuracy_gain:+.3f})"))  # fmt: skip
    ppl_rise = candidate["perplexity"] - baseline["perplexity"]
    checks.append((ppl_rise <= cfg.max_perplexity_increase,
                   f"perplexity {candidate['perplexity']:.2f} vs {baseline['perplexity']:.2f} "
                   f"(rise allowed ≤ {cfg.max_perplexity_increase:g})"))  # fmt: skip
    lat_rise = candidate["latency_p50_ms"] - baseline["latency_p50_ms"]
    checks.append((lat_rise < cfg.max_latency_increase_ms,
                   f"p50 latency {candidate['latency_p50_ms']:.1f} ms vs {baseline['latency_p50_ms']:.1f} ms "
                   f"(rise allowed < {cfg.max_latency_increase_ms:g} ms)"))  # fmt: skip
    return GateDecision(all(ok for ok, _ in checks), [f"{'ok' if ok else 'FAIL'}: {text}" for ok, text in checks])
