"""``ftops serve``: an OpenAI-compatible gateway over the registry's champions and canaries.

Routes: ``GET /v1/models`` (``ftops/<task_type>`` for each task type with a champion), ``POST
/v1/chat/completions`` (plain or ``stream: true``), ``POST /v1/feedback`` (``{"id", "rating", "task_success",
"correction"}``)
and ``GET /healthz``. A completion's ``id`` is the id of its ``interactions`` row, which is spooled durably
before the answer leaves (see :mod:`ftops.serving.interaction_log`); the header ``x-ftops-model-version``
names the version that answered. Errors are OpenAI error objects; nothing returns a traceback. With API key
hashes configured every ``/v1`` route needs ``Authorization: Bearer <key>``; keys are never logged. Each row
records which key made the call (``key_id``, a prefix of the key's hash); feedback is taken only with that key,
and ``user`` is namespaced by it, so one key can neither rate another's calls nor speak for its users.
Feedback never changes what the gateway recorded (``success``): the client's verdict goes to ``task_success``.

Limits (each a ``serving`` config field; the README's table lists them): the body is refused on its
``Content-Length`` before it is read and read as a stream with a size cap and a deadline (413, 408); NUL and
lone surrogates and an over-long ``user`` are refused (400); each version's queue is bounded (429 with
``Retry-After``, nothing logged: no model saw the call) and each request has a deadline (504, the call logged as
failed with ``finish_reason`` ``timeout``). The registry is never read on the event loop: routing comes from the
router's cache, and only the first request of a task type waits for a read (on the gateway's own small thread
pool, so a slow registry cannot starve the spool's threads).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ftops.core.config import ServingConfig
from ftops.registry.models import CANARY, CHAMPION, RegistryUnavailableError, model_name, registered_task_types
from ftops.serving.backends import ApiClientFactory, Completion, CompletionRequest
from ftops.serving.batcher import DeadlineExceededError, QueueFullError
from ftops.serving.health import gateway_health
from ftops.serving.interaction_log import SpoolFullError
from ftops.serving.openai_wire import (
    MODEL_PREFIX,
    ApiError,
    ChatRequest,
    Limits,
    completion_body,
    parse_chat_request,
    parse_json,
    read_body,
    stream_events,
)
from ftops.serving.refresh import NotReadYet, RefreshingCache

if TYPE_CHECKING:
    from ftops.serving.batcher import Batcher, ModelPool
    from ftops.serving.interaction_log import InteractionLogger
    from ftops.serving.router import Route, Router

log = logging.getLogger(__name__)

VERSION_HEADER = "x-ftops-model-version"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
RECENT_IDS = 100_000  # ids answered by this process, for feedback that arrives before the row is flushed
KEY_ID_CHARS = 12  # 48 bits of the key's hash name it in the log: enough to tell keys apart, useless to guess it


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest of an API key: what the gateway's configuration holds instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hashes(raw: str | None) -> frozenset[str]:
    """Comma- or whitespace-separated SHA-256 hex digests.

    Raises:
        ValueError: An entry is not 64 hex digits (a key pasted instead of its hash, say).
    """
    hashes = [h.strip().lower() for h in (raw or "").replace(",", " ").split()]
    bad = [i for i, h in enumerate(hashes) if len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h)]
    if bad:
        raise ValueError(f"API key hash entries {bad} are not SHA-256 hex digests (64 hex digits): store "
                         "`ftops hash-api-key` output, never the key itself")  # fmt: skip
    return frozenset(hashes)


@dataclass
class Gateway:
    """The gateway's parts; :func:`create_app` serves them.

    Attributes:
        router: Picks champion or canary per request.
        pool: Loaded versions and their batchers.
        logger: The interaction log (spool + warehouse).
        engine: The warehouse (feedback updates the logged rows there).
        table: The interaction log table.
        limits: What one request may ask for.
        key_hashes: SHA-256 digests of accepted API keys; empty = no key needed.
    """

    router: Router
    pool: ModelPool
    logger: InteractionLogger
    engine: sa.Engine
    table: str = "interactions"
    limits: Limits = field(default_factory=Limits)
    key_hashes: frozenset[str] = frozenset()
    preload: bool = True
    _recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # registry reads (only a task type's first, or the model list's) wait here, never on the default pool that
    # the spool's appends use: a hung registry then delays first requests, not logging
    _registry: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="ftops-registry"))
    _task_types: RefreshingCache[list[str]] | None = None

    # -- access ------------------------------------------------------------------------------------------
    def check_key(self, authorization: str | None) -> str | None:
        """The calling key's id (``KEY_ID_CHARS`` of its hash), None when no keys are configured.

        Raises:
            ApiError: 401 for a missing or unknown key.
        """
        if not self.key_hashes:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        digest = hash_api_key(key.strip()) if scheme.lower() == "bearer" and key.strip() else ""
        if not any(hmac.compare_digest(digest, h) for h in self.key_hashes):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")  # fmt: skip
        return digest[:KEY_ID_CHARS]

    # -- chat ----------------------------------------------------------------------------------------------
    async def route(self, task_type: str, key: str) -> tuple[Route, Batcher]:
        """Route a request and get its version loaded; a version that fails to load is marked unavailable
        and the request routed again (so its share falls to the other version)."""
        for _ in range(3):
            try:
                try:
                    route = self.router.route(task_type, key, wait=False)  # from the cache: never blocks
                except NotReadYet:  # the task type's first request: wait for its read, off the event loop
                    loop = asyncio.get_running_loop()
                    route = await loop.run_in_executor(self._registry, self.router.route, task_type, key)
            except RegistryUnavailableError as exc:
                raise ApiError(503, f"the model registry is unreachable and this gateway has no routing for "
                                    f"{MODEL_PREFIX}{task_type} yet: retry later ({exc})", "server_error",
                               "registry_unavailable") from None  # fmt: skip
            except LookupError as exc:
                raise ApiError(404, f"The model '{MODEL_PREFIX}{task_type}' cannot be served: {exc}",
                               code="model_not_found", param="model") from None  # fmt: skip
            routing = self.router.cached(task_type)  # cached by the call above; no registry read
            if routing is not None:
                self.pool.retain(task_type, {v for v in (routing.champion, routing.canary) if v})
                # A new canary loads in the background while the loaded champion answers its share: its first
                # callers would wait seconds for the load, and the canary's review would count that as its latency
                champion = routing.champion
                if route.role == CANARY and champion and not self.pool.has(task_type, route.version) \
                        and self.pool.has(task_type, champion):
                    failed = partial(self._load_failed, task_type, route.version)
                    self.pool.warm_up(task_type, route.version, failed)
                    route = replace(route, version=champion, role=CHAMPION,
                                    model_version=f"{model_name(task_type)}/{champion}")
            try:
                return route, await self.pool.batcher(task_type, route.version)
            except RegistryUnavailableError as exc:
                raise ApiError(503, f"the model registry is unreachable, {route.model_version} cannot be loaded: "
                                    f"retry later ({exc})", "server_error", "registry_unavailable") from None  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - any load failure: never route to it again
                self._load_failed(task_type, route.version, exc)
        raise ApiError(503, f"no version of {MODEL_PREFIX}{task_type} could be loaded", "server_error", "model_unavailable")

    def _load_failed(self, task_type: str, version: str, exc: BaseException) -> None:
        log.error("Loading %s version %s failed", task_type, version, exc_info=exc)
        self.router.mark_unavailable(task_type, version, f"{type(exc).__name__}: {exc}"[:500])

    async def chat(self, req: ChatRequest, key_id: str | None = None) -> tuple[str, Route, Completion]:
        """Answer one checked request made with key ``key_id``; its row is spooled (fsynced) before this returns.

        With keys on, ``user`` is namespaced by the key (``<key_id>/<user>``) for routing and in the log.
        """
        started = time.perf_counter()
        call_id = f"chatcmpl-{uuid.uuid4().hex}"
        user = f"{key_id}/{req.user}" if key_id and req.user else req.user
        route, batcher = await self.route(req.task_type, user or call_id)
        timed_out = False
        try:
            decode = self.limits.decode_cap(req.max_tokens)
            answer: Completion | None = await batcher.submit(CompletionRequest(req.messages, req.max_tokens, decode))
        except QueueFullError as exc:  # no model saw the call: nothing to log
            raise ApiError(429, f"{exc}; the gateway is at its queue bound (serving.max_queue)", "requests",
                           "rate_limit_exceeded", headers={"Retry-After": str(exc.retry_after_s)}) from None  # fmt: skip
        except DeadlineExceededError:
            log.warning("%s did not answer request %s within its deadline", route.model_version, call_id)
            answer, timed_out = None, True
        except Exception:  # noqa: BLE001 - logged as a failed call, answered as a 500 without a traceback
            log.exception("%s failed to answer request %s", route.model_version, call_id)
            answer = None
        await self._log(call_id, req, route, answer, started, user, key_id, "timeout" if timed_out else "error")
        if timed_out:
            raise ApiError(504, f"{route.model_version} did not answer within {batcher.timeout_s} s "
                                f"(serving.request_timeout_s); the call is logged as failed (id {call_id})",
                           "server_error", "timeout")  # fmt: skip
        if answer is None:
            raise ApiError(500, f"{route.model_version} failed to answer; the call is logged as failed (id "
                                f"{call_id})", "server_error", "model_error")  # fmt: skip
        return call_id, route, answer

    async def _log(self, call_id: str, req: ChatRequest, route: Route, answer: Completion | None, started: float,
                   user: str | None, key_id: str | None, failure: str = "error") -> None:  # fmt: skip
        row: dict[str, Any] = {
            "id": call_id, "task_type": req.task_type, "prompt": req.prompt, "request": req.logged(), "key_id": key_id,
            "response": answer.text if answer else "", "model_version": route.model_version, "user_id": user,
            "success": answer is not None, "latency_ms": round((time.perf_counter() - started) * 1000),
            "tokens_used": (answer.prompt_tokens + answer.completion_tokens) if answer else 0,
            "metadata": {"gateway": "ftops serve", "role": route.role, "turns": len(req.messages),
                         "finish_reason": answer.finish_reason if answer else failure, "stream": req.stream},
        }  # fmt: skip
        if answer is not None and answer.cost is not None:  # tokens x prices (upstream), decode time x price (local)
            row["metadata"]["cost"] = answer.cost
        if answer is not None and answer.decode_ms is not None:  # a local model's share of its batch's decode time
            row["metadata"]["decode_ms"] = round(answer.decode_ms, 3)
        try:
            await asyncio.to_thread(self.logger.log, **row)
        except SpoolFullError as exc:  # the warehouse has been away for long: tell the client when to come back
            log.error("Spool full, the call %s is refused: %s", call_id, exc)
            raise ApiError(503, "the gateway's log spool is full (the warehouse is unreachable): retry later",
                           "server_error", "spool_full",
                           headers={"Retry-After": str(max(1, round(self.logger.flush_every_s * 5)))}) from None  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - no answer leaves without its row
            log.exception("Could not spool the row of %s", call_id)
            raise ApiError(503, "the call could not be logged, so it is not answered: retry later", "server_error",
                           "log_unavailable") from exc  # fmt: skip
        self._recent[call_id] = None
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    # -- feedback ------------------------------------------------------------------------------------------
    def feedback(self, body: Any, key_id: str | None = None) -> dict[str, Any]:
        """:func:`ftops.serving.feedback.record_feedback` on this gateway's warehouse (blocking: run in a thread)."""
        from ftops.serving.feedback import record_feedback

        return record_feedback(self.engine, self.table, self.logger, body, key_id, recent=self._recent,
                               max_correction_chars=self.limits.max_correction_chars)  # fmt: skip

    # -- listing -------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Task types with a champion, from cached reads (blocking only for the very first list read).

        A task type whose aliases were never read is left out of this answer (its read starts now).
        """
        served = []
        for task_type in self._listing().get(""):
            try:
                if self.router.routing(task_type, wait=False).champion:
                    served.append(task_type)
            except (RegistryUnavailableError, NotReadYet, LookupError):
                continue
        return served

    def _listing(self) -> RefreshingCache[list[str]]:
        if self._task_types is None:  # the registry's task types, refreshed like the aliases
            self._task_types = RefreshingCache(lambda _: registered_task_types(), self.router.ttl_s)
        return self._task_types

    async def warm(self) -> None:
        """Load the champion and canary of every task type now, so first requests do not wait for a load."""
        try:
            task_types = await asyncio.to_thread(self._listing().get, "")  # also primes GET /v1/models
        except RegistryUnavailableError as exc:
            log.warning("Registry unreachable at start, models load on first request: %s", exc)
            return
        for task_type in task_types:
            try:
                routing = await asyncio.to_thread(self.router.routing, task_type)
            except RegistryUnavailableError as exc:
                log.warning("Registry unreachable for %s, it loads on first request: %s", task_type, exc)
                continue
            for version in (routing.champion, routing.canary):
                if version:
                    try:
                        await self.pool.batcher(task_type, version)
                    except Exception as exc:  # noqa: BLE001
                        log.exception("Loading %s version %s failed", task_type, version)
                        self.router.mark_unavailable(task_type, version, f"{type(exc).__name__}: {exc}"[:500])


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI app of a gateway (start the logger's flushing on startup, flush it on shutdown)."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(gateway.logger.start)  # replays what a crashed gateway left spooled
        if gateway.preload:
            await gateway.warm()
        try:
            yield
        finally:
            await asyncio.to_thread(gateway.logger.close)
            gateway.pool.close()
            gateway._registry.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="FT-Ops gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return JSONResponse(ApiError(400, str(exc.errors()[:3]), code="invalid_value").body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> Response:
        log.error("Unhandled %s in the gateway", type(exc).__name__, exc_info=exc)
        return JSONResponse(ApiError(500, "internal error in the FT-Ops gateway (see its log)", "server_error",
                                     "internal_error").body(), status_code=500)  # fmt: skip

    async def body_of(request: Request) -> Any:
        request.state.key_id = gateway.check_key(request.headers.get("authorization"))
        raw = await read_body(request.stream(), request.headers.get("content-length"), gateway.limits)
        return parse_json(raw)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        if gateway.key_hashes:
            try:
                gateway.check_key(request.headers.get("authorization"))
                detailed = True
            except ApiError:
                detailed = False
        else:
            detailed = request.client is not None and request.client.host in LOOPBACK
        return gateway_health(gateway.router, gateway.pool, gateway.logger, detailed)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        gateway.check_key(request.headers.get("authorization"))
        try:
            served = await asyncio.get_running_loop().run_in_executor(gateway._registry, gateway.models)
        except RegistryUnavailableError as exc:
            raise ApiError(503, f"the model registry is unreachable: {exc}", "server_error",
                           "registry_unavailable") from None  # fmt: skip
        return {"object": "list", "data": [{"id": f"{MODEL_PREFIX}{t}", "object": "model", "created": 0,
                                            "owned_by": "ftops"} for t in served]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = parse_chat_request(await body_of(request), gateway.limits)
        call_id, route, answer = await gateway.chat(req, request.state.key_id)
        headers = {VERSION_HEADER: route.model_version}
        model = f"{MODEL_PREFIX}{req.task_type}"
        if req.stream:
            events = stream_events(call_id, model, route.model_version, answer, req.include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(completion_body(call_id, model, route.model_version, answer), headers=headers)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        return await asyncio.to_thread(gateway.feedback, body, request.state.key_id)

    return app



def build_gateway(cfg: ServingConfig, engine: sa.Engine, table: str = "interactions", *,
                  api_client: ApiClientFactory | None = None, key_hashes: frozenset[str] = frozenset(),
                  spool_dir: str | None = None, preload: bool = True, cost_per_hour: float = 0.0) -> Gateway:  # fmt: skip
    """A gateway on the registry (``MLFLOW_TRACKING_URI``) and a warehouse, set up from ``serving`` config.

    Downloaded weights are cached under ``FTOPS_HOME/serving/models``; the spool is
    ``FTOPS_HOME/spool/<table>`` unless ``spool_dir`` says otherwise. ``cost_per_hour`` prices a local model's
    decode time in each call's ``metadata.cost`` (``gate.compute_cost_per_hour``; 0: only ``decode_ms`` is logged).
    """
    from ftops.core.config import ftops_home
    from ftops.core.userkey import routing_salt
    from ftops.serving.backends import load_backend
    from ftops.serving.batcher import ModelPool
    from ftops.serving.interaction_log import MIB, InteractionLogger
    from ftops.serving.router import Router
    from ftops.warehouse.schema import ensure_schema

    ensure_schema(engine, table)
    loader = partial(load_backend, cache_dir=ftops_home() / "serving" / "models", api_client=api_client,
                     cost_per_hour=cost_per_hour)  # fmt: skip
    limits = Limits(default_max_tokens=cfg.default_max_tokens, max_tokens_limit=cfg.max_tokens_limit,
                    max_messages=cfg.max_messages, max_request_chars=cfg.max_request_chars,
                    max_user_chars=cfg.max_user_chars, max_correction_chars=cfg.max_correction_chars,
                    max_body_bytes=cfg.max_body_bytes,
                    body_timeout_s=cfg.body_timeout_s, max_tokens_buckets=tuple(sorted(cfg.max_tokens_buckets)))  # fmt: skip
    return Gateway(
        router=Router(cfg.alias_ttl_s, max_negative=cfg.max_negative_routings, salt=routing_salt()),
        pool=ModelPool(loader, max_batch=cfg.max_batch, wait_s=cfg.batch_wait_ms / 1000, max_queue=cfg.max_queue,
                       timeout_s=cfg.request_timeout_s),  # fmt: skip
        logger=InteractionLogger(engine, table, spool_dir, flush_every_s=cfg.flush_every_s,
                                 segment_bytes=round(cfg.spool_segment_mb * MIB), max_bytes=round(cfg.spool_max_mb * MIB)),
        engine=engine, table=table, limits=limits, key_hashes=key_hashes, preload=preload,
    )  # fmt: skip
