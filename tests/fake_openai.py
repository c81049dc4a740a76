"""A local server that speaks enough of the OpenAI REST API for the real ``openai`` client.

It serves files, fine-tuning jobs (with events, pagination, metadata and failure states) and chat
completions from memory, on ``127.0.0.1`` and a free port, in a background thread::

    with FakeOpenAI() as server:
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url)

Each ``GET /v1/fine_tuning/jobs/{id}`` moves a job one step along validating_files → queued → running
(``running_polls`` steps, one metrics event each) → succeeded, so a test drives a job by polling it.
A job fails when its training file is invalid (not chat-format, fewer than ``min_examples`` examples), when
its training file contains ``FAIL_MARKER``, or when it was created while ``fail_next_job`` was set.

Fault injection: :meth:`FakeOpenAI.fail_next` answers the next requests with 429/5xx (with a tiny
``retry-after-ms`` so the client's own retries stay fast); ``lose_create_response`` stores the next job but
answers its create with a 500, as when a response is lost after the server acted. The ``openai`` client sends
no idempotency header and retries a 500 by itself, so a bare ``jobs.create`` then makes a second job: only the
caller's own look-up by metadata prevents duplicates (an ``Idempotency-Key`` header, if sent, is only recorded).

``calls`` counts requests per route (ids replaced by ``{id}``), ``jobs`` holds every job created and
``api_keys_seen`` every bearer token received. Chat completions whose system message is the FT-Ops judge's are
answered as a judge (``judge_calls`` counts them): truthfully from the simulator's known truth, or always
``judge_answer`` when set (a position-biased judge). :meth:`FakeOpenAI.age_job` backdates a job, to test timeouts.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ftops_dev.judge_standin import is_judge_request, verdict

FAIL_MARKER = "FTOPS_FAKE_FAIL_TRAINING"
"""A training file containing this text makes its job fail while running."""

FINE_TUNABLE_MODELS = frozenset(
    {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-2025-04-14", "gpt-4.1-mini-2025-04-14",
     "gpt-4.1-nano-2025-04-14", "gpt-3.5-turbo-0125", "gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano"}
)  # fmt: skip
CHAT_MODELS = FINE_TUNABLE_MODELS | {"gpt-4o", "gpt-4.1"}
BASE_MODEL_REPLY = "Here is a general answer that does not address the specifics of your request."
UNKNOWN_PROMPT_REPLY = "I do not know the answer to that."
TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """An error answered as the API does: a status and ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class _Fault:
    remaining: int
    status: int
    route: str | None


@dataclass
class _Job:
    data: dict[str, Any]
    fail_in_training: bool
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    running_steps: int = 0
    example_tokens: int = 0


def count_tokens(text: str) -> int:
    """The fake's token count: one token per 4 characters, rounded up (+3 per message, +3 per example)."""
    return math.ceil(len(text) / 4)


def _route_key(method: str, path: str) -> str:
    path = re.sub(r"/(ftjob|file|ftevent)-[A-Za-z0-9]+", "/{id}", path)
    return f"{method} {path}"


class FakeOpenAI:
    """The fake API server; use as a context manager or call :meth:`start` and :meth:`stop`.

    Args:
        api_key: When set, a request whose bearer token differs is answered 401.
        min_examples: Fewest training examples a job accepts (the real API wants 10).
        running_polls: Retrieves a job spends running (one metrics event each) before it succeeds.
        judge_answer: What every FT-Ops judge request is answered (``"A"``: a judge biased to the first
            position; any other text: an unparseable verdict). None: the truthful judge stand-in
            (:func:`ftops_dev.judge_standin.verdict`, from the simulator's known truth).
    """

    def __init__(
        self, *, api_key: str | None = None, min_examples: int = 10, running_polls: int = 2,
        judge_answer: str | None = None,
    ) -> None:  # fmt: skip
        self.api_key = api_key
        self.judge_answer = judge_answer  # e.g. "A": a position-biased judge; None: the truthful stand-in
        self.min_examples = min_examples
        self.running_polls = running_polls
        self.support_metadata_filter = True  # False: ignore ``metadata[k]=v`` on job lists, like some servers
        self.fail_next_job = False
        self.failure_error: dict[str, Any] = {
            "code": "training_error",
            "message": "The job failed due to an unrecoverable error in training (loss diverged at step 2).",
            "param": None,
        }
        self.lose_create_response = False
        self.chat_latency_s = 0.0
        self.calls: Counter[str] = Counter()
        self.judge_calls = 0  # chat completions answered as the judge
        self.api_keys_seen: list[str] = []
        self.idempotency_keys_seen: list[str] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.file_contents: dict[str, bytes] = {}  # kept after a delete: a finished job's replies learn from it
        self.deleted_files: list[str] = []
        self._jobs: dict[str, _Job] = {}  # insertion order = creation order
        self._models: dict[str, str] = {}  # fine-tuned model name -> job id
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._clock = int(time.time())
        self._event_seq = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- knobs and inspection ------------------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 429, *, route: str | None = None) -> None:
        """Answer the next ``n`` requests (to ``route``, e.g. ``"POST /v1/fine_tuning/jobs"``) with ``status``."""
        with self._lock:
            self._faults.append(_Fault(n, status, route))

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Every job created, oldest first (snapshots)."""
        with self._lock:
            return [json.loads(json.dumps(j.data)) for j in self._jobs.values()]

    def job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._jobs[job_id].data))

    def age_job(self, job_id: str, seconds: int) -> None:
        """Move a job's creation ``seconds`` into the past, as if it had been waiting that long."""
        with self._lock:
            self._jobs[job_id].data["created_at"] -= seconds

    # -- helpers ----------------------------------------------------------------------------------------------
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _event(self, job: _Job, message: str, *, level: str = "info", type_: str = "message",
               data: dict[str, Any] | None = None) -> None:  # fmt: skip
        self._event_seq += 1
        job.events.append({
            "id": f"ftevent-{self._event_seq:08d}{uuid.uuid4().hex[:8]}", "object": "fine_tuning.job.event",
            "created_at": self._tick(), "level": level, "message": message, "type": type_, "data": data or {},
        })  # fmt: skip

    def _take_fault(self, route: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.route is None or fault.route == route):
                    fault.remaining -= 1
                    return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
        return None

    @staticmethod
    def _page(items: list[dict[str, Any]], query: dict[str, str], default_limit: int) -> dict[str, Any]:
        """Cursor pagination as the API does it: newest first, ``after`` is the last id of the previous page."""
        try:
            limit = int(query.get("limit", default_limit))
        except ValueError:
            raise ApiError(400, "limit must be an integer", param="limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, f"limit must be between 1 and 100, got {limit}", param="limit")
        start = 0
        if "after" in query:
            ids = [i["id"] for i in items]
            if query["after"] not in ids:
                raise ApiError(400, f"No such object: {query['after']}", param="after")
            start = ids.index(query["after"]) + 1
        page = items[start : start + limit]
        return {"object": "list", "data": page, "has_more": start + limit < len(items)}

    # -- files --------------------------------------------------------------------------------------------------
    def create_file(self, body: bytes, content_type: str) -> dict[str, Any]:
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "Expected multipart/form-data")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        allowed = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
        if purpose not in allowed:
            raise ApiError(
                400, f"Invalid value for 'purpose': {purpose!r}; expected one of {allowed}.", param="purpose"
            )
        filename, content = fields["file"]
        if purpose == "fine-tune":
            for n, line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError:
                        raise ApiError(400, f"Invalid file format for Fine-Tuning API. Must be .jsonl (line {n} "
                                            "is not JSON).", param="file") from None  # fmt: skip
        return self._store_file(filename or "upload", content, purpose)

    def _store_file(self, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{uuid.uuid4().hex[:24]}"
            self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": self._tick(),
                                   "filename": filename, "purpose": purpose, "status": "processed",
                                   "expires_at": None, "status_details": None}  # fmt: skip
            self.file_contents[file_id] = content
            return self.files[file_id]

    def _file(self, file_id: str) -> dict[str, Any]:
        if file_id not in self.files:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return self.files[file_id]

    # -- fine-tuning jobs ------------------------------------------------------------------------------------------
    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model")
        if model not in FINE_TUNABLE_MODELS:
            raise ApiError(400, f"Model {model} is not available for fine-tuning or does not exist.",
                           param="model", code="model_not_available")  # fmt: skip
        files = {}
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None and param == "validation_file":
                continue
            if not isinstance(file_id, str) or file_id not in self.files:
                raise ApiError(400, f"Invalid file ID {file_id!r} for {param}.", param=param, code="invalid_file_id")
            if self.files[file_id]["purpose"] != "fine-tune":
                raise ApiError(400, f"File {file_id} has purpose {self.files[file_id]['purpose']!r}, not 'fine-tune'.",
                               param=param)  # fmt: skip
            files[param] = file_id
        hyper = self._hyperparameters(body)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ApiError(400, "suffix must be a string of at most 64 characters.", param="suffix")
        metadata = body.get("metadata")
        self._check_metadata(metadata)
        with self._lock:
            job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
            content = self.file_contents[files["training_file"]].decode("utf-8", "replace")
            fail = self.fail_next_job or FAIL_MARKER in content
            self.fail_next_job = False
            job = _Job(data={
                "id": job_id, "object": "fine_tuning.job", "created_at": self._tick(), "finished_at": None,
                "model": model, "fine_tuned_model": None, "organization_id": "org-ftops", "status": "validating_files",
                "training_file": files["training_file"], "validation_file": files.get("validation_file"),
                "hyperparameters": hyper, "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
                "result_files": [], "trained_tokens": None, "error": None, "seed": body.get("seed") or 42,
                "estimated_finish": None, "integrations": [], "metadata": metadata, "user_provided_suffix": suffix,
            }, fail_in_training=fail)  # fmt: skip
            self._jobs[job_id] = job
            self._event(job, f"Created fine-tuning job: {job_id}")
            self._event(job, f"Validating training file: {files['training_file']}")
            if self.lose_create_response:
                self.lose_create_response = False
                raise ApiError(500, "The server had an error while processing your request (response lost).",
                               type_="server_error", headers={"retry-after-ms": "1"})  # fmt: skip
            return job.data

    @staticmethod
    def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
        method = body.get("method") or {}
        if method and method.get("type") not in ("supervised", None):
            raise ApiError(400, f"Unsupported fine-tuning method {method.get('type')!r}.", param="method.type")
        given = (method.get("supervised") or {}).get("hyperparameters") or body.get("hyperparameters") or {}
        limits = {"n_epochs": (int, 1, 50, 3), "batch_size": (int, 1, 256, 1),
                  "learning_rate_multiplier": ((int, float), 1e-9, 10, 1.8)}  # fmt: skip
        unknown = set(given) - set(limits)
        if unknown:
            raise ApiError(400, f"Unknown hyperparameters: {sorted(unknown)}.", param="hyperparameters")
        resolved: dict[str, Any] = {}
        for name, (kind, low, high, auto) in limits.items():
            value = given.get(name, "auto")
            if value == "auto":
                resolved[name] = auto
                continue
            if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
                raise ApiError(400, f"Invalid value for hyperparameters.{name}: {value!r} (expected {low}..{high}).",
                               param=f"hyperparameters.{name}", code="invalid_hyperparameters")  # fmt: skip
            resolved[name] = value
        return resolved

    @staticmethod
    def _check_metadata(metadata: object) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict) or len(metadata) > 16:
            raise ApiError(400, "metadata must be an object with at most 16 keys.", param="metadata")
        for key, value in metadata.items():
            if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
                raise ApiError(400, f"Invalid metadata entry {key!r}: keys ≤ 64 characters, string values ≤ 512.",
                               param="metadata")  # fmt: skip

    def _job(self, job_id: str) -> _Job:
        if job_id not in self._jobs:
            raise ApiError(
                404, f"Could not find fine-tune: {job_id}", param="fine_tuning_job_id", code="fine_tune_not_found"
            )
        return self._jobs[job_id]

    def list_jobs(self, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            jobs = [j.data for j in reversed(self._jobs.values())]
            wanted = {
                k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")
            }
            if wanted and self.support_metadata_filter:
                jobs = [j for j in jobs if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
            return self._page(jobs, query, 20)

    def retrieve_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            self._advance(job)
            return job.data

    def _advance(self, job: _Job) -> None:
        data = job.data
        status = data["status"]
        if status == "validating_files":
            problem = self._validate_training_file(job)
            if problem:
                self._fail(job, {"code": "invalid_training_file", "param": "training_file",
                                 "message": f"The job failed due to an invalid training file. {problem}"})  # fmt: skip
                return
            data["status"] = "queued"
            self._event(job, "Files validated, moving job to queued state")
        elif status == "queued":
            data["status"] = "running"
            data["estimated_finish"] = self._clock + 600
            self._event(job, "Fine-tuning job started")
        elif status == "running":
            job.running_steps += 1
            step, total = job.running_steps, max(self.running_polls, 1)
            loss = round(2.0 / (1 + step), 4)
            self._event(job, f"Step {step}/{total}: training loss={loss}", type_="metrics",
                        data={"step": step, "total_steps": total, "train_loss": loss})  # fmt: skip
            if job.fail_in_training:
                self._fail(job, dict(self.failure_error))
            elif step >= total:
                suffix = data["user_provided_suffix"] or ""
                name = f"ft:{data['model']}:ftops:{suffix}:{data['id'][-8:]}"
                results = self._store_file("step_metrics.csv", b"step,train_loss\n", "fine-tune-results")
                data.update(status="succeeded", fine_tuned_model=name, finished_at=self._tick(),
                            result_files=[results["id"]], estimated_finish=None,
                            trained_tokens=job.example_tokens * int(data["hyperparameters"]["n_epochs"]))  # fmt: skip
                self._models[name] = data["id"]
                self._event(job, f"New fine-tuned model created: {name}")
                self._event(job, "The job has successfully completed")

    def _fail(self, job: _Job, error: dict[str, Any]) -> None:
        job.data.update(status="failed", error=error, finished_at=self._tick(), estimated_finish=None)
        self._event(job, f"Fine-tuning job failed: {error['message']}", level="error")

    def _validate_training_file(self, job: _Job) -> str | None:
        text = self.file_contents[job.data["training_file"]].decode("utf-8", "replace")
        examples = [line for line in text.splitlines() if line.strip()]
        tokens = 0
        for n, line in enumerate(examples, 1):
            messages = json.loads(line).get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages
                )
            ):
                return f"Line {n}: each example needs a 'messages' list of role/content objects."
            if messages[-1]["role"] != "assistant":
                return f"Line {n}: the last message must be from the assistant."
            tokens += 3 + sum(3 + count_tokens(m["content"]) for m in messages)
        if len(examples) < self.min_examples:
            return f"Training file has {len(examples)} example(s), but must have at least {self.min_examples} examples."
        job.example_tokens = tokens
        return None

    def list_events(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            return self._page(list(reversed(self._job(job_id).events)), query, 20)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job.data["status"] in TERMINAL:
                raise ApiError(400, f"Job {job_id} has already completed (status {job.data['status']}).",
                               code="invalid_state")  # fmt: skip
            job.data.update(status="cancelled", finished_at=self._tick(), estimated_finish=None)
            self._event(job, "Fine-tuning job cancelled")
            return job.data

    # -- chat completions -------------------------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "Invalid 'messages': expected a non-empty array.", param="messages")
        if body.get("stream"):
            raise ApiError(400, "This fake server does not stream.", param="stream")
        prompt = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
        with self._lock:
            if model in CHAT_MODELS and is_judge_request(messages):
                try:
                    reply = verdict(messages) if self.judge_answer is None else self.judge_answer
                except ValueError as exc:
                    raise ApiError(400, str(exc), param="messages") from None
                self.judge_calls += 1
            elif model in self._models:
                reply = self._learned_reply(self._jobs[self._models[model]], prompt)
            elif model in CHAT_MODELS:
                reply = BASE_MODEL_REPLY
            else:
                raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model")  # fmt: skip
        if self.chat_latency_s:
            time.sleep(self.chat_latency_s)
        prompt_tokens = 3 + sum(3 + count_tokens(str(m.get("content") or "")) for m in messages)
        completion_tokens = count_tokens(reply)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": reply, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }  # fmt: skip

    def _learned_reply(self, job: _Job, prompt: object) -> str:
        """The assistant turn of the training example whose last user turn is exactly ``prompt``."""
        text = self.file_contents[job.data["training_file"]].decode("utf-8", "replace")
        for line in text.splitlines():
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            user = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), None)
            if user == prompt:
                return str(messages[-1]["content"])
        return UNKNOWN_PROMPT_REPLY

    # -- dispatch --------------------------------------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = urlsplit(raw_path)
        path, query = parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))
        route = _route_key(method, path)
        with self._lock:
            self.calls[route] += 1
            if "idempotency-key" in headers:
                self.idempotency_keys_seen.append(headers["idempotency-key"])
        try:
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                raise ApiError(401, "You didn't provide an API key. Provide it in an Authorization header "
                                    "(Authorization: Bearer YOUR_KEY).", code="missing_api_key")  # fmt: skip
            token = auth[7:].strip()
            with self._lock:
                self.api_keys_seen.append(token)
            if self.api_key is not None and token != self.api_key:
                raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
            fault = self._take_fault(route)
            if fault is not None:
                kind = ("requests", "rate_limit_exceeded") if fault.status == 429 else ("server_error", None)
                text = "Rate limit reached for requests." if fault.status == 429 else "The server had an error."
                raise ApiError(fault.status, text, type_=kind[0], code=kind[1], headers={"retry-after-ms": "1"})
            return 200, self._dispatch(method, path, query, headers, body), {}
        except ApiError as err:
            return err.status, err.body(), err.headers

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        def json_body() -> dict[str, Any]:
            try:
                data = json.loads(body or b"{}")
            except json.JSONDecodeError:
                raise ApiError(400, "We could not parse the JSON body of your request.") from None
            if not isinstance(data, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            return data

        segments = path.strip("/").split("/")
        if segments[:1] != ["v1"]:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        rest = segments[1:]
        if rest == ["files"] and method == "POST":
            return self.create_file(body, headers.get("content-type", ""))
        if len(rest) == 2 and rest[0] == "files" and method == "GET":
            with self._lock:
                return self._file(rest[1])
        if len(rest) == 2 and rest[0] == "files" and method == "DELETE":
            with self._lock:
                self._file(rest[1])  # 404 when unknown (or deleted before)
                del self.files[rest[1]]
                self.deleted_files.append(rest[1])
            return {"id": rest[1], "object": "file", "deleted": True}
        if rest == ["fine_tuning", "jobs"]:
            if method == "POST":
                return self.create_job(json_body())
            if method == "GET":
                return self.list_jobs(query)
        if len(rest) == 3 and rest[:2] == ["fine_tuning", "jobs"] and method == "GET":
            return self.retrieve_job(rest[2])
        if len(rest) == 4 and rest[:2] == ["fine_tuning", "jobs"]:
            if rest[3] == "events" and method == "GET":
                return self.list_events(rest[2], query)
            if rest[3] == "cancel" and method == "POST":
                return self.cancel_job(rest[2])
        if rest == ["chat", "completions"] and method == "POST":
            return self.chat(json_body())
        raise ApiError(404, f"Invalid URL ({method} {path})")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    # Headers and body in one buffered write, flushed per request, with Nagle off: otherwise each response
    # waits ~40 ms for a delayed ACK.
    wbufsize = -1
    disable_nagle_algorithm = True

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _serve(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.fake.handle(self.command, self.path, headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # keep test output clean; ``FakeOpenAI.calls`` records the traffic


@contextmanager
def fake_openai(**kwargs: Any) -> Iterator[FakeOpenAI]:
    """``with fake_openai() as server: ...`` — a started :class:`FakeOpenAI`."""
    with FakeOpenAI(**kwargs) as server:
        yield server
