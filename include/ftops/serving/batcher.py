"""Batching concurrent requests per model version, and keeping the versions the router needs loaded.

A :class:`Batcher` queues the requests for one version and hands them to its backend in batches: while a
batch decodes, the requests that arrive wait, and the next batch takes them all (up to ``max_batch``), so
throughput grows with concurrency. An idle gateway decodes a lone request at once; under load a batch waits
(up to ``wait_s``) for the clients it just answered to come back. Local models decode one batch at a time on
one shared thread (they need all the cores); API backends use their own threads.

The queue of each version is bounded (``max_queue`` waiting requests): past it :meth:`Batcher.submit` raises
:class:`QueueFullError` at once (the gateway answers 429 with ``Retry-After``) instead of letting a flood build
a backlog that no client will wait for. Each request has a deadline (``timeout_s``, queueing and decoding
together): past it :class:`DeadlineExceededError` is raised and the request is dropped from the queue (a batch
already decoding finishes, its answer for that request is discarded).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from ftops.serving.backends import Backend, Completion, CompletionRequest

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The version's queue is at its bound; ``retry_after_s`` estimates when there will be room."""

    def __init__(self, name: str, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{name} has {queued} requests queued (the bound): retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(TimeoutError):
    """A request was not answered within its deadline (queued and decoding)."""


class Batcher:
    """Batches requests for one backend; created and used inside one running event loop.

    Under load a batch waits (up to ``wait_s``) until as many requests are queued as were in flight when the
    previous batch ended: the clients just answered usually send again at once, and decoding the first of them
    alone would split the load into half-full batches. "Under load" means the previous batch held more than
    one request and ended less than ``LINGER_S`` ago; an idle gateway decodes a lone request at once.

    A backend that is not ``exclusive`` (a remote model: an upstream API, an inference engine) gets each request
    on its own, at once: batching there only made callers wait for each other's answers (a 300 ms upstream
    answered 16 users at p50 1 028 ms in batches, 350 ms alone) and failed a whole batch on one error. Its
    ``max_queue`` bounds the requests in flight to it.
    """

    LINGER_S = 0.2

    def __init__(self, backend: Backend, executor: Executor, *, max_batch: int = 16, wait_s: float = 0.05,
                 max_queue: int = 64, timeout_s: float = 60.0) -> None:  # fmt: skip
        self.backend, self.executor = backend, executor
        self.max_batch, self.wait_s, self.max_queue, self.timeout_s = max_batch, wait_s, max_queue, timeout_s
        self._batch_s = 0.0  # how long the last batch took to decode: the Retry-After estimate
        self._queue: asyncio.Queue[tuple[CompletionRequest, asyncio.Future[Completion]]] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()  # a remote backend's requests being answered
        self._expected, self._last_end = 1, 0.0  # requests in flight when the last batch ended, and when
        self.batches, self.requests = 0, 0  # counters, for tests and /healthz
        self.refused, self.timed_out = 0, 0

    def queued(self) -> int:
        """Requests waiting for a batch (not those decoding)."""
        return self._queue.qsize()

    async def submit(self, request: CompletionRequest) -> Completion:
        """Queue one request and wait for its answer.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
            DeadlineExceededError: No answer within ``timeout_s``.
            Exception: What the backend raised for the request's batch.
        """
        if self._queue.qsize() + len(self._in_flight) >= self.max_queue:
            self.refused += 1
            # room comes when the queued batches have decoded: about their number times the last batch's time
            batches = math.ceil(self._queue.qsize() / self.max_batch)
            raise QueueFullError(self.backend.name, self._queue.qsize(), max(1, math.ceil(batches * self._batch_s)))
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"batcher {self.backend.name}")
        try:
            return await asyncio.wait_for(future, self.timeout_s)  # a timeout cancels the future: no batch takes it
        except TimeoutError:
            if future.cancelled():
                self.timed_out += 1
                raise DeadlineExceededError(f"{self.backend.name} did not answer within {self.timeout_s} s") from None
            raise  # a TimeoutError the backend raised

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Under load, wait until the requests expected back are queued (or ``wait_s`` has passed)."""
        target = min(self.max_batch, self._expected)
        if target <= 1 or self.wait_s <= 0 or loop.time() - self._last_end > self.LINGER_S:
            return
        deadline = loop.time() + self.wait_s
        while self._queue.qsize() < target and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        exclusive = self.backend.exclusive
        while not self._queue.empty():
            if exclusive:
                await self._fill(loop)
            batch: list[tuple[CompletionRequest, asyncio.Future[Completion]]] = []
            while len(batch) < (self.max_batch if exclusive else 1) and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(r, f) for r, f in batch if not f.cancelled()]  # the client went away
            if not batch:
                continue
            if exclusive:  # one decode at a time on this machine's compute
                await self._answer(loop, batch)
            else:  # a remote model answers each request on its own: none waits for another's answer or error
                task = loop.create_task(self._answer(loop, batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _answer(self, loop: asyncio.AbstractEventLoop,
                      batch: list[tuple[CompletionRequest, asyncio.Future[Completion]]]) -> None:  # fmt: skip
        requests = [r for r, _ in batch]
        started = loop.time()
        try:
            answers = await loop.run_in_executor(self.executor, self.backend.complete, requests)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the batch's error
            answers = None
            for _, f in batch:
                if not f.done():
                    f.set_exception(exc)
        self._expected, self._last_end = len(batch) + self._queue.qsize(), loop.time()
        self._batch_s = self._last_end - started
        if answers is None:
            return
        self.batches += 1
        self.requests += len(batch)
        for (_, f), answer in zip(batch, answers, strict=True):
            if not f.done():
                f.set_result(answer)


Loader = Callable[[str, str], Backend]


class ModelPool:
    """The loaded versions, each with its batcher; loads a version once, on first use, off the event loop.

    Args:
        loader: ``(task_type, version) -> Backend`` (e.g. :func:`~ftops.serving.backends.load_backend`).
        max_batch: Passed to each :class:`Batcher`.
        wait_s: Passed to each :class:`Batcher`.
        max_queue: Passed to each :class:`Batcher`.
        timeout_s: Passed to each :class:`Batcher`.
    """

    def __init__(self, loader: Loader, *, max_batch: int = 16, wait_s: float = 0.05, max_queue: int = 64,
                 timeout_s: float = 60.0) -> None:  # fmt: skip
        self.loader, self.max_batch, self.wait_s = loader, max_batch, wait_s
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self._warming: dict[tuple[str, str], asyncio.Task[None]] = {}  # background loads (kept referenced)
        self._local = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftops-generate")  # one decode at a time
        # remote models answer each request on its own thread: these wait on the network, not the CPU
        self._remote = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ftops-forward")
        self._guard = threading.Lock()

    async def batcher(self, task_type: str, version: str) -> Batcher:
        """The batcher of a version, loading the version first if needed (raises what loading raised)."""
        key = (task_type, str(version))
        found = self._batchers.get(key)
        if found is not None:
            return found
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            found = self._batchers.get(key)
            if found is not None:
                return found
            loop = asyncio.get_running_loop()
            # Loading reads weights and builds the model: on the decode thread, so it never races a decode.
            backend = await loop.run_in_executor(self._local, self.loader, task_type, str(version))
            executor = self._local if backend.exclusive else self._remote
            found = Batcher(backend, executor, max_batch=self.max_batch, wait_s=self.wait_s, max_queue=self.max_queue,
                            timeout_s=self.timeout_s)  # fmt: skip
            self._batchers[key] = found
            log.info("Loaded %s for serving", backend.name)
            return found

    def has(self, task_type: str, version: str) -> bool:
        """Whether the version is loaded (a request to it would not wait for a load)."""
        return (task_type, str(version)) in self._batchers

    def warm_up(self, task_type: str, version: str, on_error: Callable[[BaseException], None]) -> None:
        """Start loading a version in the background (once; call from the event loop); ``on_error`` gets what
        loading raised."""
        key = (task_type, str(version))
        if key in self._batchers or key in self._warming:
            return

        async def load() -> None:
            try:
                await self.batcher(task_type, version)
            except Exception as exc:  # noqa: BLE001 - reported to the caller's handler
                on_error(exc)
            finally:
                self._warming.pop(key, None)

        self._warming[key] = asyncio.get_running_loop().create_task(load())

    def loaded(self) -> dict[str, dict[str, Any]]:
        """``model_version -> {batches, requests, queued, refused, timed_out}`` of every loaded version."""
        return {b.backend.name: {"batches": b.batches, "requests": b.requests, "queued": b.queued(),
                                 "refused": b.refused, "timed_out": b.timed_out}
                for b in list(self._batchers.values())}  # fmt: skip

    def retain(self, task_type: str, versions: set[str]) -> None:
        """Unload the versions of ``task_type`` not in ``versions`` (those no alias routes to any more)."""
        for key in [k for k in self._batchers if k[0] == task_type and k[1] not in versions]:
            log.info("Unloading %s: no alias routes to it any more", self._batchers[key].backend.name)
            del self._batchers[key]

    def close(self) -> None:
        self._local.shutdown(wait=False, cancel_futures=True)
        self._remote.shutdown(wait=False, cancel_futures=True)
