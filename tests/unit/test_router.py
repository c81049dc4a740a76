"""The serving router against a real MLflow SQLite store: stickiness, canary share, cache, outages."""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import mlflow
import pytest

from ftops.deployment import rollout
from ftops.registry import models as registry
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
    assert router.route("ttl", "u") == Route("ttl", canary, "canary", f"ftops-ttl/{canary}")
    rollout.retire_canary("ttl", "test")
    assert router.route("ttl", "u").version == canary
    clock.now += 5
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
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert after == before
    assert "Registry unavailable; routing outage on aliases read 10 s ago" in caplog.text
    assert len([r for r in caplog.records if "Registry unavailable" in r.message]) == 1


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
