"""The gateway through the real ``openai`` client: models, completions (plain and streaming), batching,
feedback, API keys and every bad-input case answered with an OpenAI error object.

A real tiny model is registered in a real MLflow store and served by uvicorn on a free port; rows go through
the spool into a SQLite warehouse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from ftops.core.config import ServingConfig
from ftops.deployment import rollout
from ftops.serving.gateway import KEY_ID_CHARS, VERSION_HEADER, build_gateway, hash_api_key, parse_key_hashes
from ftops.serving.openai_wire import Limits
from ftops.warehouse.schema import log_tables
from tests.serving_support import GatewayServer, register_local_version

pytestmark = pytest.mark.usefixtures("mlflow_store", "one_torch_thread")
TASK = "gw"
KEY = "sk-test-gateway-key-0123456789"
COST_PER_HOUR = 0.9  # an hour of the machine the local model runs on


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mlflow_store: None, tiny_base: Path) -> Any:
    tmp = tmp_path_factory.mktemp("gateway")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTOPS_HOME", str(tmp / "home"))
        base = tiny_base
        version = register_local_version(TASK, base, "gw-champion")
        assert rollout.deploy(TASK, version, 10) == "champion"
        engine = sa.create_engine(f"sqlite:///{tmp / 'warehouse.db'}")
        gateway = build_gateway(ServingConfig(flush_every_s=0.2, max_request_chars=2000), engine,
                                spool_dir=str(tmp / "spool"), cost_per_hour=COST_PER_HOUR)  # fmt: skip
        with GatewayServer(gateway) as server:
            yield {"server": server, "engine": engine, "version": version, "gateway": gateway, "base": base}


@pytest.fixture
def client(served: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=served["server"].base_url, max_retries=0)


def _row(engine: sa.Engine, call_id: str) -> dict[str, Any]:
    _, t, _, _ = log_tables("interactions")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t).where(t.c.id == call_id))]
    assert len(rows) == 1, f"{call_id}: {len(rows)} rows"
    return rows[0]


def _flushed(served: dict[str, Any], call_id: str) -> dict[str, Any]:
    served["gateway"].logger.flush()
    return _row(served["engine"], call_id)


def test_models_lists_task_types_with_a_champion(client: openai.OpenAI, served: dict[str, Any]) -> None:
    register_local_version("gw_unserved", served["base"], "gw-unserved")  # registered, never deployed
    assert [m.id for m in client.models.list()] == [f"ftops/{TASK}"]


def test_a_completion_is_answered_logged_and_named(client: openai.OpenAI, served: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=f"ftops/{TASK}", messages=[{"role": "user", "content": "what does os.path.join do?"}], user="u-1",
        max_tokens=12,
    )  # fmt: skip
    completion = raw.parse()
    served_as = f"ftops-{TASK}/{served['version']}"
    assert raw.headers[VERSION_HEADER] == served_as
    assert completion.id.startswith("chatcmpl-") and completion.model == f"ftops/{TASK}"
    answer = completion.choices[0].message.content
    assert isinstance(answer, str) and completion.choices[0].finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 12 and completion.usage.prompt_tokens > 5
    print("gateway answer:", repr(answer))
    row = _flushed(served, completion.id)  # the response id IS the row id
    assert row["model_version"] == served_as and row["response"] == answer and row["success"] is True
    assert row["prompt"] == "what does os.path.join do?" and row["user_id"] == "u-1"
    assert row["tokens_used"] == completion.usage.total_tokens and row["latency_ms"] >= 0
    # its share of the batch's decode time, priced at the machine's hourly price (gate.compute_cost_per_hour)
    meta = json.loads(row["metadata"])
    assert 0 < meta["decode_ms"] <= row["latency_ms"] + 1
    assert meta["cost"] == pytest.approx(COST_PER_HOUR * meta["decode_ms"] / 3_600_000, rel=1e-3)


def test_streaming_gives_the_same_answer_in_chunks(client: openai.OpenAI, served: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "what does json.dumps do?"}]
    plain = client.chat.completions.create(model=f"ftops/{TASK}", messages=messages, max_tokens=16)  # type: ignore[arg-type]
    stream = client.chat.completions.create(model=f"ftops/{TASK}", messages=messages, max_tokens=16, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # greedy: the same answer either way
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert _flushed(served, ids.pop())["response"] == text


def test_concurrent_requests_are_decoded_in_batches_with_unchanged_answers(served: dict[str, Any]) -> None:
    prompts = [f"what does module number {i} do?" for i in range(8)]
    sync = openai.OpenAI(api_key="unused", base_url=served["server"].base_url, max_retries=0)
    alone = [sync.chat.completions.create(model=f"ftops/{TASK}", messages=[{"role": "user", "content": p}],
                                          max_tokens=10).choices[0].message.content for p in prompts]  # fmt: skip
    stats_before = dict(served["gateway"].pool.loaded()[f"ftops-{TASK}/{served['version']}"])

    async def together() -> list[str | None]:
        async with openai.AsyncOpenAI(api_key="unused", base_url=served["server"].base_url, max_retries=0) as c:
            done = await asyncio.gather(*(c.chat.completions.create(
                model=f"ftops/{TASK}", messages=[{"role": "user", "content": p}], max_tokens=10) for p in prompts))
        return [d.choices[0].message.content for d in done]

    assert asyncio.run(together()) == alone
    after = served["gateway"].pool.loaded()[f"ftops-{TASK}/{served['version']}"]
    assert after["requests"] - stats_before["requests"] == len(prompts)
    assert after["batches"] - stats_before["batches"] < len(prompts)  # some requests shared a decode


@pytest.mark.parametrize(
    ("kwargs", "error", "status", "code"),
    [
        ({"model": "gpt-4o"}, openai.NotFoundError, 404, "model_not_found"),
        ({"model": "ftops/nobody"}, openai.NotFoundError, 404, "model_not_found"),
        ({"model": "ftops/../etc"}, openai.NotFoundError, 404, "model_not_found"),
        ({"messages": []}, openai.BadRequestError, 400, "invalid_value"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, openai.BadRequestError, 400, "invalid_value"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, openai.BadRequestError, 400,
         "context_length_exceeded"),
        ({"max_tokens": 0}, openai.BadRequestError, 400, "invalid_value"),
        ({"max_tokens": 100_000}, openai.BadRequestError, 400, "invalid_value"),
        ({"n": 3}, openai.BadRequestError, 400, "invalid_value"),
    ],
)
def test_bad_requests_get_openai_errors(
    client: openai.OpenAI, kwargs: dict[str, Any], error: type[openai.APIStatusError], status: int, code: str
) -> None:
    request: dict[str, Any] = {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": "hi"}]} | kwargs
    with pytest.raises(error) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == code and body["message"] and body["type"]


def test_malformed_json_and_unknown_routes_get_error_objects(served: dict[str, Any]) -> None:
    url = served["server"].url
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert "Traceback" not in bad.text
    missing = httpx.get(f"{url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_feedback_updates_the_row_and_refuses_what_it_cannot_apply(client: openai.OpenAI, served: dict[str, Any]) -> None:
    url = f"{served['server'].base_url}/feedback"
    done = client.chat.completions.create(model=f"ftops/{TASK}", messages=[{"role": "user", "content": "rate me"}],
                                          max_tokens=5)  # fmt: skip
    ok = httpx.post(url, json={"id": done.id, "rating": 2, "success": False})  # before any flush: spooled still
    assert ok.status_code == 200, ok.text
    row = _row(served["engine"], done.id)
    # the client's verdict is its own column; what the gateway recorded stays
    assert row["user_feedback"] == 2 and row["task_success"] is False and row["success"] is True
    assert httpx.post(url, json={"id": done.id, "rating": 5}).status_code == 200
    assert _row(served["engine"], done.id)["user_feedback"] == 5
    unknown = httpx.post(url, json={"id": "chatcmpl-nope", "rating": 4})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    for bad in ({"id": done.id, "rating": 7}, {"id": done.id, "rating": "5"}, {"id": done.id}, {"rating": 3},
                {"id": done.id, "rating": 3, "success": "yes"}, {"id": done.id, "task_success": 1}):  # fmt: skip
        refused = httpx.post(url, json=bad)
        assert refused.status_code == 422 and refused.json()["error"]["param"], bad
    assert _row(served["engine"], done.id)["user_feedback"] == 5  # nothing refused changed it


def test_api_keys_are_required_when_configured_and_never_logged(
    served: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    gateway = build_gateway(ServingConfig(), engine, key_hashes=parse_key_hashes(hash_api_key(KEY)),
                            spool_dir=str(tmp_path / "spool"))  # fmt: skip
    caplog.set_level(logging.DEBUG)
    with GatewayServer(gateway) as server:
        for key in ("wrong-key", ""):
            anonymous = openai.OpenAI(api_key=key or "x", base_url=server.base_url, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as caught:
                anonymous.models.list()
            assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        assert httpx.post(f"{server.base_url}/chat/completions", json={}).status_code == 401
        keyed = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
        done = keyed.chat.completions.create(model=f"ftops/{TASK}", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4)  # fmt: skip
        assert done.choices[0].message.content is not None
    spooled = "".join(p.read_text() for p in (tmp_path / "spool").glob("*.jsonl"))
    with engine.connect() as conn:
        stored = str([tuple(r) for r in conn.execute(sa.text("select * from interactions"))])
    for where, text in (("logs", caplog.text), ("spool", spooled), ("warehouse", stored)):
        assert KEY not in text and "wrong-key" not in text, where
    with pytest.raises(ValueError, match="not SHA-256"):
        parse_key_hashes(KEY)  # a key pasted where its hash belongs


def test_feedback_is_the_calling_keys_verdict_and_never_rewrites_what_the_gateway_recorded(
    served: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = KEY + "-other"
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    gateway = build_gateway(ServingConfig(), engine, key_hashes=parse_key_hashes(f"{hash_api_key(KEY)},{hash_api_key(other)}"),
                            spool_dir=str(tmp_path / "spool"))  # fmt: skip
    key_a, key_b = hash_api_key(KEY)[:KEY_ID_CHARS], hash_api_key(other)[:KEY_ID_CHARS]
    with GatewayServer(gateway) as server:
        a = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
        b_headers = {"authorization": f"Bearer {other}"}
        done = a.chat.completions.create(model=f"ftops/{TASK}", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=4, user="alice")  # fmt: skip
        # B cannot rate A's call, and learns nothing about it (the same 404 as an unknown id)
        stolen = httpx.post(f"{server.base_url}/feedback", json={"id": done.id, "rating": 1, "success": False},
                            headers=b_headers)  # fmt: skip
        assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "not_found", stolen.text
        mine = httpx.post(f"{server.base_url}/feedback", json={"id": done.id, "rating": 4},
                          headers={"authorization": f"Bearer {KEY}"})  # fmt: skip
        assert mine.status_code == 200, mine.text
        # a call that fails is logged as failed; the 500 hands out its id, and feedback cannot make it a success
        batcher = next(iter(gateway.pool._batchers.values()))

        def broken(requests: Any) -> Any:
            raise RuntimeError("decoder fell over (test)")

        monkeypatch.setattr(batcher.backend, "complete", broken)
        failed = httpx.post(f"{server.base_url}/chat/completions", headers=b_headers,
                            json={"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": "boom"}]})  # fmt: skip
        assert failed.status_code == 500
        failed_id = re.search(r"chatcmpl-[0-9a-f]+", failed.json()["error"]["message"]).group(0)  # type: ignore[union-attr]
        rewrite = httpx.post(f"{server.base_url}/feedback", json={"id": failed_id, "rating": 5, "success": True},
                             headers=b_headers)  # fmt: skip
        assert rewrite.status_code == 200, rewrite.text
        gateway.logger.flush()
    good, bad = _row(engine, done.id), _row(engine, failed_id)
    assert (good["key_id"], good["user_id"], good["user_feedback"], good["task_success"]) == (key_a, f"{key_a}/alice", 4, None)
    assert (bad["key_id"], bad["success"], bad["task_success"], bad["user_feedback"]) == (key_b, False, True, 5)


def test_a_version_that_cannot_load_gets_no_traffic(
    client: openai.OpenAI, served: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not a model")
    canary = register_local_version(TASK, broken, "gw-broken")
    assert rollout.deploy(TASK, canary, 100) == "canary"  # every key would go to it
    served["gateway"].router.invalidate(TASK)
    try:
        with caplog.at_level(logging.WARNING, logger="ftops.serving.router"):
            raws = [client.chat.completions.with_raw_response.create(
                model=f"ftops/{TASK}", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4, user=f"u{i}")
                for i in range(5)]  # fmt: skip
        assert {r.headers[VERSION_HEADER] for r in raws} == {f"ftops-{TASK}/{served['version']}"}
        assert any(f"version {canary} marked unavailable" in m for m in caplog.messages)
    finally:
        rollout.retire_canary(TASK, "broken weights (test)")
        served["gateway"].router.invalidate(TASK)


def test_a_new_canary_loads_in_the_background_while_the_champion_answers_its_share(
    client: openai.OpenAI, served: dict[str, Any]
) -> None:
    canary = register_local_version(TASK, served["base"], "gw-warm-canary")
    assert rollout.deploy(TASK, canary, 100) == "canary"  # every key would go to it
    served["gateway"].router.invalidate(TASK)
    try:
        def ask(i: int) -> str:
            return client.chat.completions.with_raw_response.create(
                model=f"ftops/{TASK}", messages=[{"role": "user", "content": f"w{i}"}], max_tokens=4, user=f"u{i}",
            ).headers[VERSION_HEADER]  # fmt: skip

        # its first caller does not wait for the load (seconds, which its review would count as its latency)
        assert ask(0) == f"ftops-{TASK}/{served['version']}"
        deadline, seen = time.monotonic() + 60, []
        while time.monotonic() < deadline and (not seen or seen[-1] != f"ftops-{TASK}/{canary}"):
            seen.append(ask(len(seen) + 1))
            time.sleep(0.2)
        assert seen[-1] == f"ftops-{TASK}/{canary}", seen  # loaded: it gets its share
    finally:
        rollout.retire_canary(TASK, "test over")
        served["gateway"].router.invalidate(TASK)


def test_simulated_users_call_through_the_gateway_and_rate_the_answers(served: dict[str, Any]) -> None:
    from ftops_dev.traffic import simulate_traffic

    report = simulate_traffic(served["server"].base_url, requests=24, concurrency=4, seed=3, task_types=[TASK],
                              max_tokens=8)  # fmt: skip
    name = f"ftops-{TASK}/{served['version']}"
    assert set(report.versions) == {name}
    stats = report.versions[name]
    assert stats.requests == 24 and stats.errors == 0 and stats.samples
    print("\n".join(report.lines()))
    served["gateway"].logger.flush()
    _, t, _, _ = log_tables("interactions")
    with served["engine"].connect() as conn:
        ratings = list(conn.scalars(sa.select(t.c.user_feedback).where(
            t.c.user_id.is_not(None), t.c.model_version == name, t.c.user_feedback.is_not(None))))  # fmt: skip
    assert len(ratings) >= len(stats.ratings) > 0  # every rating the users gave reached its row


def test_a_full_spool_answers_503_with_retry_after(served: dict[str, Any], tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    # ~2 rows of this test's size: the cap, not the model, decides
    gateway = build_gateway(ServingConfig(spool_max_mb=0.002, flush_every_s=0.2), engine, spool_dir=str(tmp_path / "spool"))
    body = {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    with GatewayServer(gateway) as server:
        gateway.logger.engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")  # warehouse gone
        answers = [httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60) for _ in range(6)]
        assert answers[0].status_code == 200
        full = answers[-1]
        assert full.status_code == 503 and full.json()["error"]["code"] == "spool_full"
        assert int(full.headers["retry-after"]) >= 1
        assert gateway.logger.health()["spool_full"]
        gateway.logger.engine = engine  # the warehouse is back: the rows go in, calls are taken again
        gateway.logger.flush()
        assert not gateway.logger.health()["spool_full"]
        assert httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60).status_code == 200


# -- limits and hostile input (issue 19) -----------------------------------------------------------------------
def _post(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", content=json.dumps(body).encode(),
                      headers={"content-type": "application/json"}, timeout=30)  # fmt: skip


@pytest.mark.parametrize(
    ("message", "user", "param"),
    [
        ("nul \x00 here", None, "messages[0].content"),
        ("lone \ud800 surrogate", None, "messages[0].content"),
        ("fine", "user\x00id", "user"),
        ("fine", "\udfff", "user"),
        ("fine", "u" * 257, "user"),
    ],
)
def test_unstorable_text_and_a_long_user_are_refused_before_the_model(
    served: dict[str, Any], message: str, user: str | None, param: str
) -> None:
    before = served["gateway"].pool.loaded()[f"ftops-{TASK}/{served['version']}"]["requests"]
    body = {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": message}], "max_tokens": 4}
    refused = _post(served["server"].url, body | ({"user": user} if user is not None else {}))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_value" and error["param"] == param
    assert served["gateway"].pool.loaded()[f"ftops-{TASK}/{served['version']}"]["requests"] == before  # no decode
    fine = _post(served["server"].url, {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": "ok"}],
                                        "max_tokens": 4, "user": "u" * 256})  # fmt: skip
    assert fine.status_code == 200 and _flushed(served, fine.json()["id"])["user_id"] == "u" * 256


def test_a_deeply_nested_body_is_a_json_error_not_a_crash(served: dict[str, Any]) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    bad = httpx.post(f"{served['server'].url}/v1/chat/completions", content=nested, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json", bad.text


def _raw_request(port: int, head: bytes, body: bytes = b"", read_s: float = 10) -> tuple[bytes, float]:
    """Send raw bytes on a fresh connection; the response's bytes and the seconds until the first arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as s:
        s.sendall(head + body)
        started = time.monotonic()
        first = s.recv(65536)
        return first, time.monotonic() - started


def test_the_body_is_refused_on_its_length_before_it_is_read(served: dict[str, Any]) -> None:
    port = served["server"].port
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\n\r\n")  # fmt: skip
    answer, waited = _raw_request(port, head)  # not one body byte sent: answered from the header alone
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer and waited < 5
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 1_000_000
    body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    answer, _ = _raw_request(port, chunked, body)  # no Content-Length: counted while streaming, stopped at 4 MiB
    assert answer.startswith(b"HTTP/1.1 413")
    for length in (b"-1", b"12abc"):  # a malformed length: a 4xx from the server or the gateway, never a 500
        answer, _ = _raw_request(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
                                 + b"\r\n\r\n{}")  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 4"), answer


def test_a_client_holding_its_body_open_gets_408(served: dict[str, Any]) -> None:
    gateway = served["gateway"]
    limits = gateway.limits
    gateway.limits = dataclasses.replace(limits, body_timeout_s=0.5)
    try:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 200\r\n\r\n")  # fmt: skip
        answer, waited = _raw_request(served["server"].port, head, b'{"model": "ftops/')  # and then nothing
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer and 0.4 < waited < 5
    finally:
        gateway.limits = limits


def test_a_full_queue_answers_429_and_a_late_answer_504(served: dict[str, Any]) -> None:
    gateway = served["gateway"]
    batcher = gateway.pool._batchers[(TASK, served["version"])]
    release = threading.Event()
    gateway.pool._local.submit(release.wait, 30)  # the decode thread is busy: nothing decodes meanwhile
    saved = batcher.max_queue, batcher.timeout_s
    batcher.max_queue, batcher.timeout_s = 2, 1.5
    body = {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": "queued?"}], "max_tokens": 4}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served["server"].url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(6)))

    try:
        answers = asyncio.run(flood())
    finally:
        batcher.max_queue, batcher.timeout_s = saved
        release.set()
    codes = sorted(a.status_code for a in answers)
    # those taken into the (blocked) batch and the two queued time out; the rest find the queue full
    assert set(codes) == {429, 504} and codes.count(504) >= 2 and codes.count(429) >= 1, codes
    full = next(a for a in answers if a.status_code == 429)
    assert full.json()["error"]["code"] == "rate_limit_exceeded" and int(full.headers["retry-after"]) >= 1
    late = [a.json()["error"] for a in answers if a.status_code == 504]
    assert all(e["code"] == "timeout" for e in late)
    call_id = late[0]["message"].rsplit("(id ", 1)[1].rstrip(")")
    row = _flushed(served, call_id)  # a call past its deadline is logged as failed
    metadata = row["metadata"] if isinstance(row["metadata"], dict) else json.loads(row["metadata"])
    assert row["success"] is False and metadata["finish_reason"] == "timeout"
    assert _post(served["server"].url, body).status_code == 200  # and the gateway serves on


def test_caps_are_decoded_in_buckets_and_cut_back(served: dict[str, Any]) -> None:
    assert Limits().decode_cap(5) == 16 and Limits().decode_cap(16) == 16 and Limits().decode_cap(17) == 32
    assert Limits(max_tokens_buckets=(8,)).decode_cap(300) == 300
    url = served["server"].url
    ask = {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": "what does zip do?"}]}
    short, long = (_post(url, ask | {"max_tokens": n}).json() for n in (5, 16))
    assert short["usage"]["completion_tokens"] <= 5
    assert long["choices"][0]["message"]["content"].startswith(short["choices"][0]["message"]["content"])


def test_healthz_is_short_without_a_key_and_full_with_one(served: dict[str, Any], tmp_path: Path) -> None:
    full = httpx.get(f"{served['server'].url}/healthz").json()  # no keys configured, asked from loopback
    assert full["status"] == "ok" and f"ftops-{TASK}/{served['version']}" in full["loaded"]
    assert full["routing"][TASK]["champion"] == served["version"] and full["routing_age_s"][TASK] >= 0
    assert "queued" in full["loaded"][f"ftops-{TASK}/{served['version']}"] and "spooled_rows" in full
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    gateway = build_gateway(ServingConfig(), engine, key_hashes=parse_key_hashes(hash_api_key(KEY)),
                            spool_dir=str(tmp_path / "spool"), preload=False)  # fmt: skip
    with GatewayServer(gateway) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        wrong = httpx.get(f"{server.url}/healthz", headers={"authorization": "Bearer nope"})
        assert wrong.json() == {"status": "ok"}
        keyed = httpx.get(f"{server.url}/healthz", headers={"authorization": f"Bearer {KEY}"}).json()
        assert set(keyed) >= {"status", "loaded", "unavailable", "routing_age_s", "spooled_rows"}


def test_serve_refuses_a_network_bind_without_keys(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftops import cli

    monkeypatch.delenv("FTOPS_API_KEY_HASHES", raising=False)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["serve", "--host", "0.0.0.0"]) == 2  # refused before anything starts
    assert "FTOPS_API_KEY_HASHES" in caplog.text and "--insecure-no-auth" in caplog.text
