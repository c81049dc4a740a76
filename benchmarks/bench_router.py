"""Benchmark the serving router: routing decisions per second and the canary share it gives.

Usage::

    . scripts/env.sh && python benchmarks/bench_router.py [--quick] [--keys 100000] [--repeat 5]
        [--percents 10,37]

The router (:class:`ftops.serving.router.Router`) is given its aliases by an injected lookup, read once (the
TTL is an hour), so every timed decision is what a gateway does between two registry reads: the cache check,
the unavailable-version checks, one SHA-256 of ``task_type NUL key`` and the :class:`Route`. The lookup is
counted to show the registry is read once per task type.

Timed over the same ``--keys`` distinct keys (``user-<i>``, built before timing), ``--repeat`` times
round-robin, median reported; ratios are against the baseline measured in the same run:

* baseline: ``hashlib.sha256(f"{task_type}\\x00{key}".encode()).digest()``, the least a stable hash routing
  can cost per key;
* ``bucket()``: the router's hash to one of 10 000 buckets;
* ``Router.route()``: a whole decision;
* ``Router.route()`` through ``asyncio.to_thread``, awaited one at a time, as the gateway called it before
  issue 19 (a tenth of the keys: it is slow); the gateway now calls it on the event loop, where a routing is a
  cache hit and a stale one is refreshed in the background.

The canary share: for each ``--percents`` value, the fraction of the keys routed to the canary against the
configured share, with the binomial standard error ``sqrt(p(1-p)/n)`` and the deviation in those units
(|z| < 3 is sampling noise). Also: every key routed again gives the same version (stickiness), and a key's
canary membership in two task types is independent (the share of keys that are canary in both is p²).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from ftops.serving.router import Router, bucket  # noqa: E402


@dataclass
class FakeVersion:
    """What the router reads of a registered model version: its number and tags."""

    version: str
    tags: dict[str, str] = field(default_factory=dict)


class Aliases:
    """An alias lookup (champion 1, canary 2 at a share per task type) that counts its calls."""

    def __init__(self, percents: dict[str, float]) -> None:
        self.percents, self.calls = percents, 0

    def __call__(self, task_type: str, alias: str) -> FakeVersion | None:
        self.calls += 1
        if alias == "champion":
            return FakeVersion("1")
        return FakeVersion("2", {"traffic_percent": str(self.percents[task_type])})


def time_methods(methods: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each method, ``repeat`` times round-robin (load that comes and goes falls on all alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, run in methods.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000, help="distinct routing keys")
    parser.add_argument("--repeat", type=int, default=5, help="timings of each method, round-robin")
    parser.add_argument("--percents", type=lambda s: [float(x) for x in s.split(",")], default=[10.0, 37.0])
    parser.add_argument("--quick", action="store_true", help="3 repeats (the share still over all --keys)")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 3
    with open("/proc/loadavg") as f:
        print(f"load before: {f.read().strip()}")

    keys = [f"user-{i}" for i in range(args.keys)]
    tasks = {p: f"share{int(p * 100)}" for p in args.percents}
    aliases = Aliases({t: p for p, t in tasks.items()})
    router = Router(ttl_s=3600, lookup=aliases)
    task = tasks[args.percents[0]]
    router.route(task, "warm-up")  # the one registry read of this task type
    thread_keys = keys[: max(1, len(keys) // 10)]

    async def via_threads() -> None:
        for k in thread_keys:
            await asyncio.to_thread(router.route, task, k)

    methods: dict[str, Callable[[], object]] = {
        "sha256 of task NUL key (baseline)": lambda: [hashlib.sha256(f"{task}\x00{k}".encode()).digest() for k in keys],
        "`bucket()`": lambda: [bucket(task, k) for k in keys],
        "`Router.route()`": lambda: [router.route(task, k) for k in keys],
        "`Router.route()` via `asyncio.to_thread` (the gateway before issue 19)": lambda: asyncio.run(via_threads()),
    }
    counts = {name: len(keys) for name in methods}
    counts["`Router.route()` via `asyncio.to_thread` (the gateway before issue 19)"] = len(thread_keys)
    seconds = time_methods(methods, args.repeat)
    base = statistics.median(seconds["sha256 of task NUL key (baseline)"]) / len(keys)

    print(f"\n### Routing decisions: {len(keys):,} keys, median of {args.repeat} round-robin timings\n")
    print("| method | keys | median s (range) | µs per key | per second | cost vs sha256 |")
    print("|---|---|---|---|---|---|")
    for name, runs in seconds.items():
        med = statistics.median(runs)
        per_key = med / counts[name]
        print(f"| {name} | {counts[name]:,} | {med:.3f} ({min(runs):.3f}-{max(runs):.3f}) | {per_key * 1e6:.2f} "
              f"| {1 / per_key:,.0f} | {per_key / base:.1f}× |")  # fmt: skip

    print(f"\n### Canary share over {len(keys):,} keys\n")
    print("| configured | observed | difference (pp) | standard error (pp) | z | sticky on a second pass |")
    print("|---|---|---|---|---|---|")
    roles: dict[float, list[bool]] = {}
    for p, t in tasks.items():
        roles[p] = [router.route(t, k).role == "canary" for k in keys]
        again = [router.route(t, k).role == "canary" for k in keys]
        share = sum(roles[p]) / len(keys)
        se = math.sqrt(p / 100 * (1 - p / 100) / len(keys))
        z = (share - p / 100) / se if se else 0.0
        print(f"| {p:g} % | {share * 100:.3f} % | {(share - p / 100) * 100:+.3f} | {se * 100:.3f} | {z:+.2f} "
              f"| {'yes' if again == roles[p] else '**no**'} |")  # fmt: skip
    if len(roles) >= 2:
        (p1, r1), (p2, r2) = list(roles.items())[:2]
        both = sum(a and b for a, b in zip(r1, r2, strict=True)) / len(keys)
        expected = p1 / 100 * p2 / 100
        se = math.sqrt(expected * (1 - expected) / len(keys))
        print(f"\nCanary in both {tasks[p1]} ({p1:g} %) and {tasks[p2]} ({p2:g} %): {both * 100:.3f} % of keys, "
              f"independent buckets would give {expected * 100:.3f} % (z {(both - expected) / se:+.2f})")  # fmt: skip
    print(f"\nRegistry lookups: {aliases.calls} (2 aliases × {len(tasks)} task types: read once each)")
    with open("/proc/loadavg") as f:
        print(f"load after: {f.read().strip()}")


if __name__ == "__main__":
    main()
