"""Batching concurrent requests per model version, and keeping the versions the router needs loaded.

A :class:`Batcher` queues the requests for one version and hands them to its backend in batches: while a
batch decodes, the requests that arrive wait, and the next batch takes them all (up to ``max_batch``), so
throughput grows with concurrency. An idle gateway decodes a lone request at once; under load a batch waits
(up to ``wait_s``) for the clients it just answered to come back. Local models decode one batch at a time on
one shared thread (they need all the cores); API backends use their own threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from ftops.serving.backends import Backend, Completion, CompletionRequest

log = logging.getLogger(__name__)


class Batcher:
    """Batches requests for one backend; created and used inside one running event loop.

    Under load a batch waits (up to ``wait_s``) until as many requests are queued as were in flight when the
    previous batch ended: the clients just answered usually send again at once, and decoding the first of them
    alone would split the load into half-full batches. "Under load" means the previous batch held more than
    one request and ended less than ``LINGER_S`` ago; an idle gateway decodes a lone request at once.
    """

    LINGER_S = 0.2

    def __init__(self, backend: Backend, executor: Executor, *, max_batch: int = 16, wait_s: float = 0.05) -> None:
        self.backend, self.executor = backend, executor
        self.max_batch, self.wait_s = max_batch, wait_s
        self._queue: asyncio.Queue[tuple[CompletionRequest, asyncio.Future[Completion]]] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._expected, self._last_end = 1, 0.0  # requests in flight when the last batch ended, and when
        self.batches, self.requests = 0, 0  # counters, for tests and /healthz

    async def submit(self, request: CompletionRequest) -> Completion:
        """Queue one request and wait for its answer (raises what the backend raised for its batch)."""
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"batcher {self.backend.name}")
        return await future

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
        while not self._queue.empty():
            await self._fill(loop)
            batch: list[tuple[CompletionRequest, asyncio.Future[Completion]]] = []
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(r, f) for r, f in batch if not f.cancelled()]  # the client went away
            if not batch:
                continue
            requests = [r for r, _ in batch]
            try:
                answers = await loop.run_in_executor(self.executor, self.backend.complete, requests)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the batch's error
                answers = None
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
            self._expected, self._last_end = len(batch) + self._queue.qsize(), loop.time()
            if answers is None:
                continue
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
    """

    def __init__(self, loader: Loader, *, max_batch: int = 16, wait_s: float = 0.05) -> None:
        self.loader, self.max_batch, self.wait_s = loader, max_batch, wait_s
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self._local = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftops-generate")  # one decode at a time
        self._remote = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ftops-forward")
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
            found = Batcher(backend, executor, max_batch=self.max_batch, wait_s=self.wait_s)
            self._batchers[key] = found
            log.info("Loaded %s for serving", backend.name)
            return found

    def loaded(self) -> dict[str, dict[str, Any]]:
        """``model_version -> {batches, requests}`` of every loaded version."""
        return {b.backend.name: {"batches": b.batches, "requests": b.requests} for b in self._batchers.values()}

    def retain(self, task_type: str, versions: set[str]) -> None:
        """Unload the versions of ``task_type`` not in ``versions`` (those no alias routes to any more)."""
        for key in [k for k in self._batchers if k[0] == task_type and k[1] not in versions]:
            log.info("Unloading %s: no alias routes to it any more", self._batchers[key].backend.name)
            del self._batchers[key]

    def close(self) -> None:
        self._local.shutdown(wait=False, cancel_futures=True)
        self._remote.shutdown(wait=False, cancel_futures=True)
