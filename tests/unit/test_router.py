"""The serving router against a real MLflow SQLite store: stickiness, canary share, cache, outages."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from ftops.deployment import rollout
from ftops.registry import models as registry
from ftops.serving.refresh import NotReadYet
from ftops.serving.router import Route, Router, bucket

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one store per module; tests use their own task types


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _version(task_type: str, key: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tags(registry.run_key_tags(key))
    return registry.register(task_type, run.info.run_id, f"file:///{key}", {})


def _champion_and_canary(task_type: str, percent: int) -> tuple[str, str]:
    champion, canary = _version(task_type, "a"), _version(task_type, "b")
    assert rollout.deploy(task_type, champion, percent) == "champion"
    assert rollout.deploy(task_type, canary, percent) == "canary"
    return champion, canary


def test_a_key_stays_on_one_version_and_the_route_names_the_model() -> None:
    champion, canary = _champion_and_canary("sticky", 50)
    router = Router(ttl_s=60)
    first = {f"user-{i}": router.route("sticky", f"user-{i}") for i in range(200)}
    router.invalidate()  # a fresh read of the registry routes every key the same way
    assert {k: router.route("sticky", k) for k in first} == first
    assert {r.version for r in first.values()} == {champion, canary}
    r = next(r for r in first.values() if r.role == "canary")
    assert r == Route("sticky", canary, "canary", f"ftops-sticky/{canary}")
    assert Router(ttl_s=60).route("sticky", "user-7") == first["user-7"]  # another gateway process agrees


@pytest.mark.parametrize("percent", [10, 37])
def test_the_canary_share_over_many_keys_is_the_configured_share(percent: int) -> None:
    task_type = f"share{percent}"
    _champion_and_canary(task_type, percent)
    router = Router(ttl_s=3600)  # aliases read once; the 100 000 decisions below are pure hashing
    started = time.perf_counter()
    n = 100_000
    canary = sum(router.route(task_type, f"u{i}").role == "canary" for i in range(n))
    assert abs(canary / n * 100 - percent) < 1.0, canary
    assert time.perf_counter() - started < 10


def test_buckets_depend_on_the_task_type() -> None:
    assert [bucket("a", f"u{i}") for i in range(50)] != [bucket("b", f"u{i}") for i in range(50)]
    assert all(0 <= bucket("a", f"u{i}") < 10_000 for i in range(1000))


def test_a_keyed_hash_keeps_clients_from_choosing_canary_users(monkeypatch) -> None:
    from ftops.core.userkey import routing_salt

    monkeypatch.setenv("FTOPS_USER_KEY_SECRET", "one installation")
    salt = routing_salt()
    assert salt == routing_salt() and len(salt) == 32  # stable: one user keeps meeting one version
    plain = [bucket("a", f"u{i}") < 1000 for i in range(2000)]  # what a client can compute for a 10 % canary
    keyed = [bucket("a", f"u{i}", salt) < 1000 for i in range(2000)]
    assert plain != keyed and abs(sum(keyed) - 200) < 60  # other users, the same share
    picked = [i for i, hit in enumerate(plain) if hit]  # users a client chose to land on the canary
    assert sum(keyed[i] for i in picked) < len(picked) / 2  # ... mostly land on the champion instead
    monkeypatch.setenv("FTOPS_USER_KEY_SECRET", "another installation")
    assert routing_salt() != salt


def test_alias_changes_are_seen_only_after_the_ttl() -> None:
    clock = Clock()
    champion = _version("ttl", "a")
    rollout.deploy("ttl", champion, 100)
    router = Router(ttl_s=5, clock=clock)
    assert router.route("ttl", "u").version == champion
    canary = _version("ttl", "b")
    assert rollout.deploy("ttl", canary, 100) == "canary"  # the whole traffic, so every key would move
    clock.now += 4.9
    assert router.route("ttl", "u").version == champion  # cached
    clock.now += 0.2
    assert router.route("ttl", "u").version == champion  # stale: answered at once, one read starts behind it
    router.settle()
    assert router.route("ttl", "u") == Route("ttl", canary, "canary", f"ftops-ttl/{canary}")
    rollout.retire_canary("ttl", "test")
    assert router.route("ttl", "u").version == canary
    clock.now += 5
    router.route("ttl", "u")
    router.settle()
    assert router.route("ttl", "u").version == champion


def test_a_registry_outage_keeps_the_last_routing(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    champion, canary = _champion_and_canary("outage", 30)
    router = Router(ttl_s=5, clock=clock)
    before = {f"u{i}": router.route("outage", f"u{i}") for i in range(300)}
    assert {r.version for r in before.values()} == {champion, canary}
    clock.now += 10
    path = os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    lock = sqlite3.connect(path, timeout=0, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # a real failure: MLflow's reads fail after sqlite's busy timeout
    try:
        with caplog.at_level(logging.WARNING, logger="ftops.serving.router"):
            after = {k: router.route("outage", k) for k in before}  # one registry read; then the routing is kept
            router.settle()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert after == before
    assert "Registry unavailable; routing outage on aliases read 10 s ago" in caplog.text
    assert len([r for r in caplog.records if "Registry unavailable" in r.message]) == 1
    assert router.failing() == {"outage"}  # /healthz: degraded once this routing is also old
    clock.now += 10
    router.route("outage", "u0")  # the registry is back: the next read succeeds
    router.settle()
    assert router.failing() == set()


def test_without_earlier_routing_an_outage_raises() -> None:
    def down(task_type: str, alias: str) -> None:
        raise registry.RegistryUnavailableError("store down")

    with pytest.raises(registry.RegistryUnavailableError, match="store down"):
        Router(lookup=down).route("anything", "u")


def test_no_champion_is_a_clear_error() -> None:
    with pytest.raises(LookupError, match="ftops-nochamp has no 'champion' alias"):
        Router().route("nochamp", "u")
    with pytest.raises(ValueError, match="invalid task type"):
        Router().route("../etc", "u")


def test_an_unavailable_canary_gets_no_traffic(caplog: pytest.LogCaptureFixture) -> None:
    champion, canary = _champion_and_canary("broken", 50)
    router = Router(ttl_s=60)
    assert {router.route("broken", f"u{i}").version for i in range(100)} == {champion, canary}
    caplog.clear()  # earlier INFO lines (registration) may be captured when the suite's log level is INFO
    with caplog.at_level(logging.WARNING, logger="ftops.serving.router"):
        router.mark_unavailable("broken", canary, "weights missing")
        router.mark_unavailable("broken", canary, "weights missing")
    said = [r for r in caplog.records if r.name == "ftops.serving.router" and r.levelno >= logging.WARNING]
    assert len(said) == 1 and "weights missing" in said[0].getMessage()  # logged once
    routes = [router.route("broken", f"u{i}") for i in range(1000)]
    assert {(r.version, r.role) for r in routes} == {(champion, "champion")}
    assert router.unavailable() == {("broken", canary): "weights missing"}
    router.mark_available("broken", canary)
    router.mark_unavailable("broken", champion, "out of memory")  # only the canary is left: it serves everyone
    assert {router.route("broken", f"u{i}").role for i in range(100)} == {"canary"}
    router.mark_unavailable("broken", canary, "again")
    with pytest.raises(LookupError, match="marked unavailable"):
        router.route("broken", "u")
    router.mark_available("broken", champion)
    assert router.route("broken", "u").version == champion


def test_an_invalid_canary_share_sends_no_traffic_to_the_canary() -> None:
    champion, canary = _champion_and_canary("badtag", 10)
    registry.set_tags("badtag", canary, {"traffic_percent": "lots"})
    router = Router()
    assert {router.route("badtag", f"u{i}").version for i in range(200)} == {champion}


class SlowRegistry:
    """A lookup that counts its calls and takes ``delay`` seconds (or fails) on demand: the registry's stand-in
    for the timing tests below (the real MLflow behind a slow proxy is tests/integration/test_gateway_outages.py)."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions, self.calls, self.delay, self.down = versions, 0, 0.0, False
        self.lock = threading.Lock()

    def __call__(self, task_type: str, alias: str) -> object:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.down:
            raise registry.RegistryUnavailableError("registry down")
        version = self.versions.get(alias)
        return None if version is None else types.SimpleNamespace(version=version, tags={"traffic_percent": "0"})


def test_a_read_is_stamped_when_it_finishes_not_when_it_starts() -> None:
    reg = SlowRegistry({"champion": "1"})
    router = Router(ttl_s=0.5, lookup=reg)
    reg.delay = 0.3  # two lookups: 0.6 s, longer than the ttl
    started = time.monotonic()
    router.route("stamp", "u")
    routing = router.cached("stamp")
    assert routing is not None and routing.read_at >= started + 0.55
    calls = reg.calls
    router.route("stamp", "u")  # fresh: read 0 s ago, not 0.6 s ago
    assert reg.calls == calls


def test_concurrent_callers_share_one_read_and_a_stale_routing_answers_at_once() -> None:
    reg = SlowRegistry({"champion": "1"})
    reg.delay = 0.25
    router = Router(ttl_s=0.2, lookup=reg)
    with ThreadPoolExecutor(16) as pool:  # 16 first callers: one read, the others wait for it
        routes = list(pool.map(lambda i: router.route("flight", f"u{i}"), range(16)))
    assert {r.version for r in routes} == {"1"} and reg.calls == 2  # champion + canary of one read
    time.sleep(0.25)  # stale now
    reg.versions["champion"] = "2"
    with ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        routes = list(pool.map(lambda i: router.route("flight", f"u{i}"), range(16)))
        waited = time.monotonic() - started
    assert {r.version for r in routes} == {"1"} and waited < 0.2  # the old routing, without waiting 0.5 s
    router.settle()
    assert reg.calls == 4 and router.route("flight", "u").version == "2"  # one background read refreshed it


def test_an_outage_costs_one_read_per_ttl_and_keeps_the_routing() -> None:
    clock = Clock()
    reg = SlowRegistry({"champion": "1"})
    router = Router(ttl_s=5, clock=clock, lookup=reg)
    router.route("down", "u")
    reg.down, before = True, reg.calls
    for _ in range(10):  # 10 ttls of outage, 100 requests per ttl
        clock.now += 5
        for i in range(100):
            assert router.route("down", f"u{i}").version == "1"
        router.settle()
    assert reg.calls - before == 10  # one failing read (its first lookup) per ttl
    routing = router.cached("down")
    assert routing is not None and clock.now - routing.read_at == 50  # the routing's age shows the outage
    reg.down = False
    reg.versions["champion"] = "2"
    clock.now += 5
    router.route("down", "u")
    router.settle()
    assert router.route("down", "u").version == "2"


def test_random_model_names_are_remembered_in_a_bounded_lru() -> None:
    clock = Clock()
    reg = SlowRegistry({})  # no model: every name is unknown
    router = Router(ttl_s=5, clock=clock, lookup=reg, max_negative=50)
    for i in range(200):
        with pytest.raises(LookupError, match="has no 'champion' alias"):
            router.route(f"random{i}", "u")
    assert reg.calls == 400 and router._cache.unpinned_count() == 50  # 200 names read once each, 50 kept
    for i in range(150, 200):  # the last 50 are cached: no read
        with pytest.raises(LookupError):
            router.route(f"random{i}", "u")
    assert reg.calls == 400 and router.served() == {}


def test_a_failed_first_read_is_answered_from_the_cache_until_the_ttl() -> None:
    clock = Clock()
    reg = SlowRegistry({"champion": "1"})
    reg.down = True
    router = Router(ttl_s=5, clock=clock, lookup=reg)
    for _ in range(20):
        with pytest.raises(registry.RegistryUnavailableError):
            router.route("never", "u")
    assert reg.calls == 1
    with pytest.raises(NotReadYet):
        Router(lookup=reg).route("never", "u", wait=False)  # nothing cached: never blocks, reads behind
