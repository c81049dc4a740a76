"""A stand-in teacher: a local OpenAI-compatible chat completions server that answers the simulator's prompts.

It stands in for a strong hosted model, which no machine here can reach; the pipeline talks to it through the
real ``openai`` client, as to any OpenAI-compatible endpoint::

    with TeacherStandin(accuracy=0.95) as teacher:
        client = openai.OpenAI(api_key="sk-test", base_url=teacher.base_url)

* **Answers.** For a prompt the simulator made (its truth is read back from the prompt, PII placeholders and all:
  :func:`ftops_dev.known_truth.expected_answer`), the right reply (:func:`ftops_dev.task_types.reference_response`)
  with probability ``accuracy``, else a wrong one of the same shape; the draw is a hash of ``seed`` and the prompt,
  so one prompt always gets the same answer. Any other prompt gets :data:`UNKNOWN_REPLY`. ``answer_for`` replaces
  the reply (e.g. to return text that breaks a format rule). A judge request (the FT-Ops judge's system prompt) is
  answered by the judge stand-in (:mod:`ftops_dev.judge_standin`), so one server can be teacher and judge.
* **Usage.** Each response carries ``usage`` (4 characters a token, +3 a message), so callers can price calls.
* **Faults.** ``mode``: ``"ok"``, ``"error"`` (HTTP 500), ``"slow"`` (waits ``delay_s`` before answering, past a
  client's timeout), ``"down"`` (drops the connection unanswered); :meth:`stop` refuses connections altogether.
* **Record.** Every request body received (``requests``, in order, also those answered with a fault): what left
  the house, for tests to assert on.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ftops_dev import judge_standin
from ftops_dev.judge_standin import completion
from ftops_dev.known_truth import expected_answer
from ftops_dev.task_types import TASKS, reference_response

UNKNOWN_REPLY = "I do not know the answer to that."


def teacher_reply(prompt: str, *, accuracy: float = 0.95, seed: int = 0) -> str:
    """The stand-in teacher's answer to a prompt (see the module docstring)."""
    for task_type, (_, make_wrong) in TASKS.items():
        try:
            expected = expected_answer(task_type, prompt)
        except ValueError:
            continue
        if expected is None:
            continue
        draw = random.Random(hashlib.sha256(f"{seed}/{prompt}".encode()).digest())
        if draw.random() < accuracy:
            return reference_response(task_type, expected)
        return reference_response(task_type, make_wrong(draw, expected))
    return UNKNOWN_REPLY


class TeacherStandin:
    """The stand-in server on ``127.0.0.1`` (a free port unless given), in a background thread.

    Args:
        accuracy: Share of the simulator's prompts answered right.
        seed: Seed of the right/wrong draw.
        answer_for: Replaces the reply to a user prompt (its argument); None: :func:`teacher_reply`.
        latency_s: Seconds each chat answer takes (a large hosted model's time to answer; 0: at once).
        host: Address to bind.
        port: Port to bind; 0: a free one.
    """

    def __init__(self, *, accuracy: float = 0.95, seed: int = 0, answer_for: Callable[[str], str] | None = None,
                 latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:  # fmt: skip
        self.accuracy, self.seed, self.answer_for, self.latency_s = accuracy, seed, answer_for, latency_s
        self.mode = "ok"  # ok | error | slow | down
        self.delay_s = 5.0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        """The API's base URL (``http://host:port/v1``)."""
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> TeacherStandin:
        self._server = ThreadingHTTPServer(self._address, _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="teacher-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving: from now on connections are refused (the port is kept so ``base_url`` still names it)."""
        if self._server is not None:
            self._address = self._server.server_address[:2]  # type: ignore[assignment]
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> TeacherStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until killed (``ftops simulate-judge``/demo endpoints)."""
        self._server = ThreadingHTTPServer(self._address, _handler(self))
        self._server.serve_forever()

    def sent_text(self) -> str:
        """Every message content of every request received, joined: what left the house."""
        with self._lock:
            bodies = list(self.requests)
        return "\n".join(str(m.get("content") or "") for b in bodies for m in b.get("messages") or [])

    def record(self, body: Mapping[str, Any]) -> None:
        """Keep a copy of a request body received."""
        with self._lock:
            self.requests.append(json.loads(json.dumps(body)))

    def respond(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer a request body (recorded by the caller): (HTTP status, response body)."""
        messages = body.get("messages") or []
        if self.mode == "error":
            return 500, {"error": {"message": "the stand-in teacher is failing", "type": "server_error"}}
        if self.mode == "slow":
            time.sleep(self.delay_s)
        elif self.latency_s:
            time.sleep(self.latency_s)
        if judge_standin.is_judge_request(messages):
            return 200, judge_standin.chat_completion(body)
        prompt = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        reply = self.answer_for(prompt) if self.answer_for else teacher_reply(prompt, accuracy=self.accuracy,
                                                                             seed=self.seed)  # fmt: skip
        return 200, completion(body.get("model"), reply, messages)


def _handler(standin: TeacherStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw or b"{}")
                standin.record(body)
                if standin.mode == "down":
                    self.close_connection = True  # no answer at all: the client sees a dropped connection
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, out = 404, {"error": {"message": "only POST /v1/chat/completions", "type": "not_found"}}
                else:
                    status, out = standin.respond(body)
            except (ValueError, TypeError) as exc:
                status, out = 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}
            data = json.dumps(out).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up waiting (a slow answer past its timeout)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: requests hold prompts
            return

    return Handler
