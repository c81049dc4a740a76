"""A read-through cache that never makes a caller wait for a value it already has.

The gateway reads the registry (aliases per task type, the list of task types) through it. A value is read
again after ``ttl_s`` seconds, counted from when its read *finished* (a slow read does not come back already
stale). Reads are single-flight per key: while one read of a key is running, nobody starts another. A caller
that finds a stale value gets it at once while one background thread reads the new one; only a key never read
before makes its first caller wait (and the callers that come meanwhile wait for that same read). A read that
fails keeps the last value and is retried only after another ``ttl_s``; a key that failed without any earlier
value answers its error to everyone for ``ttl_s`` (one caller retries after that), so an outage costs at most
one read per key per ``ttl_s`` whatever the request rate.

Values for which ``pinned(value)`` is false (a task type with no registered model: any random ``model`` name a
client sends) and failures live in a bounded LRU of ``max_unpinned`` keys, so arbitrary names cannot grow the
gateway's memory; pinned values (task types that are served) are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotReadYet(LookupError):
    """``get(key, wait=False)`` found nothing cached: the first read of the key has started in the background."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A key's last read: its value (or, when no read ever succeeded, the error) and when the read finished."""

    value: T | None
    error: BaseException | None
    stamped: float
    failed: bool = False  # the last read failed and ``value`` is the one kept from before it

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # a value entry holds one (None only for T = None)


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry[object] | None = None


class RefreshingCache(Generic[T]):
    """Values of ``read(key)``, kept ``ttl_s`` seconds after each read finished; safe between threads.

    Args:
        read: Reads one key's value (blocking; may raise).
        ttl_s: Seconds a read stays fresh; 0: every `get` reads (callers wait, one read at a time per key).
        clock: Monotonic seconds (injectable for tests).
        pinned: Whether a value is kept outside the bounded LRU (default: every value is).
        max_unpinned: Size of the LRU of unpinned values and failures.
        on_failure: Called ``(key, error, kept)`` when a read fails (``kept``: the value still answered, if any).
    """

    def __init__(self, read: Callable[[str], T], ttl_s: float, *, clock: Callable[[], float] = time.monotonic,
                 pinned: Callable[[T], bool] = lambda _: True, max_unpinned: int = 1024,
                 on_failure: Callable[[str, BaseException, T | None], None] | None = None) -> None:  # fmt: skip
        if ttl_s < 0 or max_unpinned < 1:
            raise ValueError(f"need ttl_s >= 0 and max_unpinned >= 1, got {ttl_s}, {max_unpinned}")
        self._read, self.ttl_s, self._clock = read, ttl_s, clock
        self._pinned, self.max_unpinned, self._on_failure = pinned, max_unpinned, on_failure
        self._kept: dict[str, Entry[T]] = {}
        self._lru: OrderedDict[str, Entry[T]] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def get(self, key: str, *, wait: bool = True) -> T:
        """The value of ``key``: fresh or stale from the cache at once, else read (waiting only then).

        Args:
            key: The key.
            wait: False: never block; with nothing cached, start the read in the background and raise.

        Raises:
            NotReadYet: ``wait`` is false and the key has nothing cached.
            Exception: What the read raised, when ``key`` has no value (the last error within ``ttl_s``).
        """
        with self._lock:
            entry = self._entry(key)
            if entry is not None and self._clock() - entry.stamped < self.ttl_s:
                return entry.result()
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if entry is not None and self.ttl_s > 0 and (entry.error is None or not leader):  # ttl 0: always read
            # A stale value (or the last error) answers now; one thread reads the new value meanwhile.
            if leader:
                threading.Thread(target=self._refresh, args=(key, flight, entry), name=f"refresh {key}",
                                 daemon=True).start()  # fmt: skip
            return entry.result()
        if not wait:
            if leader:
                threading.Thread(target=self._refresh, args=(key, flight, entry), name=f"read {key}",
                                 daemon=True).start()  # fmt: skip
            raise NotReadYet(key)
        if leader:
            self._refresh(key, flight, entry)
        else:
            flight.done.wait()
        assert flight.entry is not None
        return flight.entry.result()  # type: ignore[return-value]

    def peek(self, key: str) -> Entry[T] | None:
        """The key's cached entry, however old, without reading (None when never read or evicted)."""
        with self._lock:
            return self._kept.get(key) or self._lru.get(key)

    def keys(self) -> list[str]:
        """Keys whose value is pinned (the LRU's keys are not listed)."""
        with self._lock:
            return list(self._kept)

    def unpinned_count(self) -> int:
        with self._lock:
            return len(self._lru)

    def invalidate(self, key: str | None = None) -> None:
        """Forget one key (or all) so the next ``get`` reads it."""
        with self._lock:
            if key is None:
                self._kept.clear()
                self._lru.clear()
            else:
                self._kept.pop(key, None)
                self._lru.pop(key, None)

    def settle(self, timeout: float = 30) -> None:
        """Wait for the reads in flight now to finish (for tests and a clean shutdown)."""
        with self._lock:
            flights = list(self._flights.values())
        deadline = time.monotonic() + timeout
        for f in flights:
            f.done.wait(max(0.0, deadline - time.monotonic()))

    def _entry(self, key: str) -> Entry[T] | None:
        found = self._kept.get(key)
        if found is None and (found := self._lru.get(key)) is not None:
            self._lru.move_to_end(key)
        return found

    def _refresh(self, key: str, flight: _Flight, before: Entry[T] | None) -> None:
        try:
            entry = self._read_entry(key, before)
            with self._lock:
                self._kept.pop(key, None)
                self._lru.pop(key, None)
                if entry.error is None and self._pinned(entry.value):  # type: ignore[arg-type]
                    self._kept[key] = entry
                else:
                    self._lru[key] = entry
                    while len(self._lru) > self.max_unpinned:
                        self._lru.popitem(last=False)
                flight.entry = entry  # type: ignore[assignment]
        finally:  # whatever happened, the waiters wake and the next caller may read again
            with self._lock:
                self._flights.pop(key, None)
            if flight.entry is None:
                flight.entry = Entry(None, RuntimeError(f"reading {key!r} was interrupted"), self._clock())
            flight.done.set()

    def _read_entry(self, key: str, before: Entry[T] | None) -> Entry[T]:
        try:
            value = self._read(key)
        except Exception as exc:  # noqa: BLE001 - kept for the callers: the last value, or the error itself
            kept = before.value if before is not None and before.error is None else None
            if self._on_failure is not None:
                self._on_failure(key, exc, kept)
            return Entry(kept, None, self._clock(), failed=True) if kept is not None else Entry(None, exc, self._clock())
        return Entry(value, None, self._clock())  # stamped after the read finished
