"""The gate and the canary judge: pure decision functions (the governor's policies: test_governor.py)."""

from ftops.core.config import CanaryConfig, GateConfig
from ftops.deployment.canary import judge
from ftops.deployment.gate import apply_gate

BASE = {"accuracy": 0.40, "perplexity": 10.0, "latency_p50_ms": 50.0, "n": 100}


def test_gate_passes_a_clear_improvement() -> None:
    d = apply_gate({**BASE, "accuracy": 0.60, "perplexity": 5.0}, BASE, GateConfig())
    assert d.passed and d.decision == "deploy"
    assert all(r.startswith("ok") for r in d.reasons)


def test_gate_names_every_failed_criterion() -> None:
    worse = {"accuracy": 0.42, "perplexity": 11.0, "latency_p50_ms": 300.0, "n": 5}
    d = apply_gate(worse, BASE, GateConfig())
    assert not d.passed and d.decision == "archive"
    failed = [r for r in d.reasons if r.startswith("FAIL")]
    assert len(failed) == 4
    assert any("accuracy" in r for r in failed) and any("perplexity" in r for r in failed)
    assert any("latency" in r for r in failed) and any("test examples" in r for r in failed)


def test_gate_accuracy_threshold_is_inclusive() -> None:
    assert apply_gate({**BASE, "accuracy": 0.45}, BASE, GateConfig()).passed
    assert not apply_gate({**BASE, "accuracy": 0.449}, BASE, GateConfig()).passed


def test_canary_judge() -> None:
    cfg = CanaryConfig()
    healthy = {"requests": 500, "error_rate": 0.01, "latency_p95_ms": 900}
    assert judge({"requests": 3, "error_rate": 1.0, "latency_p95_ms": 1}, {}, 30, cfg).action == "hold"
    assert judge(healthy, {}, 2, cfg).action == "hold"
    assert judge(healthy, {}, 25, cfg).action == "hold"  # 500 calls: min_requests (3 532 by 80 % power) not met
    assert judge(healthy, {}, 25, CanaryConfig(min_requests=500)).action == "promote"
    assert judge({**healthy, "error_rate": 0.2}, {"error_rate": 0.01}, 2, cfg).action == "rollback"
    assert judge({**healthy, "latency_p95_ms": 2500}, {}, 30, cfg).action == "rollback"
