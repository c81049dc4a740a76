"""Which registered model version serves a request: the ``canary`` for its share of keys, else the ``champion``.

A request's routing key (the user, or the request id when there is no user) is hashed with the task type into
one of 10 000 buckets; buckets below ``traffic_percent × 100`` go to the canary. The hash is stable, so one
user always meets one version for as long as the aliases stay put, and the canary's observed share matches
its configured share to within sampling noise. The gateway keys the hash with a secret of the installation
(an HMAC), so a client cannot compute which ``user`` names land on the canary and pick them to steer it.

The aliases are read from the registry at most once per task type per ``ttl_s`` seconds, counted from when the
read finished, through a :class:`~ftops.serving.refresh.RefreshingCache`: one read per task type at a time, a
stale routing answered at once while one background read refreshes it, so only the very first request of a task
type waits for the registry. When the registry cannot be reached, the last routing read stays in force (and is
retried after another ``ttl_s``), because a gateway that stops answering when MLflow blinks would be worse than
one that routes on slightly old aliases. Task types with no model or no alias (any random ``model`` name a
client sends) are remembered in a bounded LRU (``max_negative`` names) for ``ttl_s``.
A version the gateway cannot load is marked unavailable and gets no traffic: its share goes to the champion.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftops.core.names import check_task_type
from ftops.registry.models import CANARY, CHAMPION, alias_version, model_name
from ftops.serving.refresh import RefreshingCache

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

BUCKETS = 10_000  # a share resolves to 0.01 percentage points


@dataclass(frozen=True)
class Route:
    """The version chosen for one request.

    Attributes:
        task_type: The task type asked for.
        version: The registered version number, as a string.
        role: ``champion`` or ``canary``.
        model_version: ``ftops-<task_type>/<version>``: the interaction row's ``model_version`` and the
            ``x-ftops-model-version`` header.
    """

    task_type: str
    version: str
    role: str
    model_version: str


@dataclass(frozen=True)
class Routing:
    """The aliases of one task type as last read from the registry.

    Attributes:
        champion: The champion's version, or None when the model has no champion.
        canary: The canary's version, or None.
        canary_percent: The canary's ``traffic_percent`` tag (0-100; 0 without a canary).
        read_at: The router clock's time when the read of these aliases finished (an outage keeps the old
            routing and its old ``read_at``: its age says how old the aliases in force are).
    """

    champion: str | None
    canary: str | None
    canary_percent: float
    read_at: float


def bucket(task_type: str, key: str, salt: bytes = b"") -> int:
    """The stable bucket (0 to 9 999) of a routing key within a task type.

    The task type is part of the hash so that one user is not the canary's test subject for every task type.
    With a ``salt`` the hash is an HMAC under it: stable for whoever holds the salt, unpredictable to clients.
    """
    message = f"{task_type}\x00{key}".encode("utf-8", "surrogatepass")
    digest = hmac.new(salt, message, hashlib.sha256).digest() if salt else hashlib.sha256(message).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def traffic_percent(tags: dict[str, str]) -> float:
    """A canary's share from its ``traffic_percent`` version tag, clamped to 0-100 (0 when missing or invalid)."""
    raw = tags.get("traffic_percent")
    try:
        value = float(raw) if raw is not None else 0.0
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        log.warning("Canary tag traffic_percent=%r is not a number; the canary gets no traffic", raw)
        return 0.0
    return min(max(value, 0.0), 100.0)


AliasLookup = Callable[[str, str], "ModelVersion | None"]


class Router:
    """Routes requests to model versions by the registry's aliases, cached for ``ttl_s`` seconds.

    Safe to share between threads.

    Args:
        ttl_s: How long aliases read from the registry are used before they are read again.
        clock: Monotonic seconds (injectable for tests).
        lookup: Reads one alias, ``(task_type, alias) -> ModelVersion | None``; default the registry's
            :func:`~ftops.registry.models.alias_version`.
        max_negative: Task types without a champion or canary remembered at most (a bounded LRU).
        salt: Keys the bucket hash (:func:`bucket`); every gateway of one installation needs the same one.
    """

    def __init__(
        self, ttl_s: float = 5.0, *, clock: Callable[[], float] = time.monotonic, lookup: AliasLookup | None = None,
        max_negative: int = 1024, salt: bytes = b"",
    ) -> None:  # fmt: skip
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self.ttl_s, self.salt = ttl_s, salt
        self._clock = clock
        self._lookup: AliasLookup = lookup or alias_version
        self._cache: RefreshingCache[Routing] = RefreshingCache(
            self._read, ttl_s, clock=clock, pinned=lambda r: bool(r.champion or r.canary), max_unpinned=max_negative,
            on_failure=self._failed,
        )  # fmt: skip
        self._unavailable: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def route(self, task_type: str, key: str, *, wait: bool = True) -> Route:
        """The version that serves ``key`` for ``task_type``.

        Args:
            task_type: The task type.
            key: The routing key: the user id, or the request id when there is no user.
            wait: False: never block on the registry (raise ``NotReadYet`` when the task type was never read;
                its read starts in the background).

        Returns:
            The chosen route.

        Raises:
            InvalidNameError: The task type is not a valid name.
            LookupError: The task type has no champion (or neither champion nor canary can be served).
            RegistryUnavailableError: The registry cannot be reached and this router has no earlier routing.
            NotReadYet: ``wait`` is false and nothing is cached for the task type.
        """
        routing = self.routing(task_type, wait=wait)
        champion = (
            routing.champion if routing.champion and not self._is_unavailable(task_type, routing.champion) else None
        )
        canary = routing.canary if routing.canary and not self._is_unavailable(task_type, routing.canary) else None
        if canary is not None and canary == champion:
            canary = None
        if canary is not None and (champion is None or bucket(task_type, key, self.salt) < routing.canary_percent * 100):
            return self._route(task_type, canary, CANARY)
        if champion is not None:
            return self._route(task_type, champion, CHAMPION)
        if routing.champion is None:
            raise LookupError(f"{model_name(task_type)} has no {CHAMPION!r} alias: nothing to serve; deploy a version")
        raise LookupError(f"{model_name(task_type)}: champion version {routing.champion} is marked unavailable "
                          f"({self._unavailable.get((task_type, routing.champion))}) and no canary can serve")  # fmt: skip

    def routing(self, task_type: str, *, wait: bool = True) -> Routing:
        """The aliases of ``task_type``: cached, refreshed after ``ttl_s``, kept when the registry fails.

        Raises:
            InvalidNameError: The task type is not a valid name.
            RegistryUnavailableError: The registry cannot be reached and there is no earlier routing.
            NotReadYet: ``wait`` is false and nothing is cached for the task type.
        """
        return self._cache.get(check_task_type(task_type), wait=wait)

    def cached(self, task_type: str) -> Routing | None:
        """The last routing read for ``task_type``, however old, without touching the registry."""
        entry = self._cache.peek(task_type)
        return entry.value if entry is not None else None

    def served(self) -> dict[str, Routing]:
        """Cached routings of the task types with a champion or canary (no registry read)."""
        return {t: e.value for t in self._cache.keys() if (e := self._cache.peek(t)) is not None and e.value}

    def failing(self) -> set[str]:
        """Task types served on a kept routing because their last registry read failed (no registry read)."""
        return {t for t in self._cache.keys() if (e := self._cache.peek(t)) is not None and e.failed}

    def settle(self, timeout: float = 30) -> None:
        """Wait for the background registry reads in flight (tests; a routing change is then visible)."""
        self._cache.settle(timeout)

    def _read(self, task_type: str) -> Routing:
        champion = self._lookup(task_type, CHAMPION)
        canary = self._lookup(task_type, CANARY)
        percent = traffic_percent(dict(canary.tags or {})) if canary is not None else 0.0
        fresh = Routing(champion=_version(champion), canary=_version(canary), canary_percent=percent,
                        read_at=self._clock())  # fmt: skip
        entry = self._cache.peek(task_type)
        cached = entry.value if entry is not None else None
        if cached is not None and (cached.champion, cached.canary, cached.canary_percent) != (
            fresh.champion, fresh.canary, fresh.canary_percent
        ):  # fmt: skip
            log.info("Routing of %s changed: champion %s -> %s, canary %s (%s%%) -> %s (%s%%)", task_type,
                     cached.champion, fresh.champion, cached.canary, cached.canary_percent, fresh.canary,
                     fresh.canary_percent)  # fmt: skip
        return fresh

    def _failed(self, task_type: str, exc: BaseException, kept: Routing | None) -> None:
        if kept is None:
            log.warning("Registry unavailable and no routing of %s yet; retry in %s s: %s", task_type, self.ttl_s, exc)
            return
        log.warning("Registry unavailable; routing %s on aliases read %.0f s ago (champion %s, canary %s at "
                    "%s%%), retry in %s s: %s", task_type, self._clock() - kept.read_at, kept.champion, kept.canary,
                    kept.canary_percent, self.ttl_s, exc)  # fmt: skip

    def mark_unavailable(self, task_type: str, version: str, reason: str) -> None:
        """Never route to ``version`` of ``task_type`` again (it cannot be loaded); logged once per version.

        The version's share goes to the champion (or, when the champion itself is marked, all traffic goes to
        the canary).
        """
        key = (check_task_type(task_type), str(version))
        with self._lock:
            first = key not in self._unavailable
            if first:
                self._unavailable[key] = reason
        if first:
            log.warning("%s version %s marked unavailable, it gets no traffic: %s", model_name(task_type), version,
                        reason)  # fmt: skip

    def mark_available(self, task_type: str, version: str) -> None:
        """Route to ``version`` again (after it loaded)."""
        with self._lock:
            reason = self._unavailable.pop((task_type, str(version)), None)
        if reason is not None:
            log.info("%s version %s is available again", model_name(task_type), version)

    def unavailable(self) -> dict[tuple[str, str], str]:
        """``(task_type, version) -> reason`` of every version marked unavailable."""
        with self._lock:
            return dict(self._unavailable)

    def invalidate(self, task_type: str | None = None) -> None:
        """Forget cached aliases (of one task type, or all) so the next request reads the registry."""
        self._cache.invalidate(task_type)

    def _is_unavailable(self, task_type: str, version: str) -> bool:
        with self._lock:
            return (task_type, version) in self._unavailable

    @staticmethod
    def _route(task_type: str, version: str, role: str) -> Route:
        return Route(
            task_type=task_type, version=version, role=role, model_version=f"{model_name(task_type)}/{version}"
        )


def _version(mv: Any) -> str | None:
    return None if mv is None else str(mv.version)
