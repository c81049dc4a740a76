"""A real ``ftops serve`` on the PostgreSQL warehouse, attacked as a careless or hostile client would.

One server for the module, with small bounds from its config file (queue 2, batch 2, body deadline 1 s), on a
log table its user created with a ``varchar(8)`` ``user_id``. Each abuse gets its documented 4xx or 429 (never
a 500, nor a 503 of the gateway's own making); a row the warehouse refuses lands in the spool's rejected file
and the rows after it are inserted; afterwards 50 normal calls are each in the warehouse exactly once, with
their feedback stored beside what the gateway recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ftops.deployment import rollout
from ftops.warehouse.schema import log_tables
from tests.serving_support import ServeProcess, register_local_version

pytestmark = pytest.mark.usefixtures("mlflow_store", "one_torch_thread")
TASK = "abuse"
SERVING = {"max_queue": 2, "max_batch": 2, "body_timeout_s": 1, "request_timeout_s": 60, "flush_every_s": 0.3}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mlflow_store: None, postgres_url: str, tiny_base: Path) -> Any:
    tmp = tmp_path_factory.mktemp("abuse")
    base = tiny_base
    version = register_local_version(TASK, base, "abuse-champion")
    assert rollout.deploy(TASK, version, 10) == "champion"
    table = f"interactions_abuse_{os.getpid()}"
    engine = sa.create_engine(postgres_url)
    _, design, _, _ = log_tables(table)  # the user's own table: the log's columns, a short user_id
    sa.Table(table, sa.MetaData(), *(sa.Column(c.name, sa.String(8) if c.name == "user_id" else c.type,
                                               primary_key=c.primary_key) for c in design.c)).create(engine)  # fmt: skip
    try:
        with ServeProcess(tmp, warehouse=postgres_url, serving=SERVING, table=table) as gw:
            yield {"url": gw.url, "port": gw.port, "table": table, "engine": engine, "tmp": tmp,
                   "spool": tmp / "home" / "spool" / table}  # fmt: skip
    finally:
        log_tables(table)[0].drop_all(sa.create_engine(postgres_url))


def _chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": f"ftops/{TASK}", "messages": [{"role": "user", "content": content}], "max_tokens": 4} | extra


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return dict(error)


def test_unstorable_text_nesting_and_huge_fields_get_400s(gateway: dict[str, Any]) -> None:
    url = f"{gateway['url']}/v1/chat/completions"
    with httpx.Client(timeout=30) as c:
        assert _error(c.post(url, json=_chat("a\x00b")), 400, "invalid_value")["param"] == "messages[0].content"
        surrogate = json.dumps(_chat("x")).replace('"x"', '"\\ud800"')  # JSON's escape: a lone surrogate
        assert _error(c.post(url, content=surrogate), 400, "invalid_value")["param"] == "messages[0].content"
        assert _error(c.post(url, content=b"[" * 200_000 + b"]" * 200_000), 400, "invalid_json")
        assert _error(c.post(url, content=b"x" * 5_000_000), 413, "request_too_large")
        assert _error(c.post(url, json=_chat(user="u" * 3_000_000)), 400, "invalid_value")["param"] == "user"
        assert _error(c.post(url, json=_chat(user="a\x00")), 400, "invalid_value")["param"] == "user"


def test_random_model_names_are_404s(gateway: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway["url"], timeout=30) as c:
        for _ in range(200):
            answer = c.post("/v1/chat/completions", json=_chat(model=f"ftops/r{uuid.uuid4().hex[:12]}"))
            _error(answer, 404, "model_not_found")
        assert c.get("/healthz").json()["status"] == "ok"


def test_a_client_holding_its_body_open_gets_408_and_its_slot_back(gateway: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", gateway["port"]), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 500\r\n\r\n{\"model\": ")  # fmt: skip
        started = time.monotonic()
        answer = s.recv(65536)
        waited = time.monotonic() - started
        while chunk := s.recv(65536):  # then the server closes the connection: the slot is free
            answer += chunk
    closed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer and waited < 10, answer
    assert closed < waited + 2  # closed with the answer, not after a keep-alive timeout


def test_a_flood_past_the_queue_bound_gets_429s_not_errors(gateway: dict[str, Any]) -> None:
    async def client(c: httpx.AsyncClient, k: int) -> list[httpx.Response]:
        return [await c.post("/v1/chat/completions", json=_chat(f"flood {k} {i}", max_tokens=64)) for i in range(3)]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway["url"], timeout=60,
                                     limits=httpx.Limits(max_connections=32)) as c:  # fmt: skip
            done = await asyncio.gather(*(client(c, k) for k in range(16)))
        return [r for rs in done for r in rs]

    answers = asyncio.run(flood())
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429} and codes.count(429) >= 1 and codes.count(200) >= 2, codes
    full = next(a for a in answers if a.status_code == 429)
    _error(full, 429, "rate_limit_exceeded")
    assert int(full.headers["retry-after"]) >= 1


def _stored(gateway: dict[str, Any], ids: list[str]) -> dict[str, int]:
    """id -> copies in the warehouse, once every id is there (or after a minute)."""
    _, t, _, _ = log_tables(gateway["table"])
    deadline = time.monotonic() + 60
    while True:
        with gateway["engine"].connect() as conn:
            counts = dict(conn.execute(sa.select(t.c.id, sa.func.count()).where(t.c.id.in_(ids)).group_by(t.c.id)).all())
        if len(counts) == len(ids) or time.monotonic() > deadline:
            return counts
        time.sleep(0.3)


def test_a_row_the_warehouse_refuses_is_set_aside_and_the_rows_after_it_go_in(gateway: dict[str, Any]) -> None:
    secret = f"prompt-of-the-refused-row-{uuid.uuid4().hex}"
    with httpx.Client(base_url=gateway["url"], timeout=60) as c:
        refused = c.post("/v1/chat/completions", json=_chat(secret, user="a-name-longer-than-8"))
        assert refused.status_code == 200, refused.text  # valid for the gateway: spooled, then refused by the table
        after = [c.post("/v1/chat/completions", json=_chat(f"after the refused row {i}", user="u-after")).json()["id"]
                 for i in range(5)]  # fmt: skip
    assert _stored(gateway, after) == dict.fromkeys(after, 1)
    rejected = [json.loads(line) for line in (gateway["spool"] / "rejected.jsonl").read_text().splitlines()]
    mine = [r for r in rejected if r["row"]["id"] == refused.json()["id"]]
    assert len(mine) == 1 and "varying(8)" in mine[0]["reason"], rejected
    _, t, _, _ = log_tables(gateway["table"])
    with gateway["engine"].connect() as conn:  # its segment came before the rows stored above: it is settled
        assert conn.scalar(sa.select(sa.func.count()).where(t.c.id == refused.json()["id"])) == 0
    assert secret not in (gateway["tmp"] / "gateway.log").read_text()  # the reason names the column, not the text
    with httpx.Client(base_url=gateway["url"], timeout=30) as c:
        health = c.get("/healthz").json()
        assert health["status"] == "ok", health  # one refused row does not degrade the gateway


def test_after_the_abuse_normal_calls_are_each_stored_once_with_their_feedback(gateway: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway["url"], timeout=60) as c:
        ids = []
        for i in range(50):
            done = c.post("/v1/chat/completions", json=_chat(f"normal call {i}", user=f"user-{i % 5}"))
            assert done.status_code == 200, done.text
            ids.append(done.json()["id"])
        for i, call_id in enumerate(ids):
            rated = c.post("/v1/feedback", json={"id": call_id, "rating": 1 + i % 5, "task_success": i % 2 == 0})
            assert rated.status_code == 200, rated.text
    assert _stored(gateway, ids) == dict.fromkeys(ids, 1)
    _, t, _, _ = log_tables(gateway["table"])
    with gateway["engine"].connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(t).where(t.c.id.in_(ids)))}
    assert [(rows[i].user_feedback, rows[i].task_success, rows[i].success) for i in ids] == [
        (1 + k % 5, k % 2 == 0, True) for k in range(50)]  # fmt: skip
    with gateway["engine"].connect() as conn:
        stored = list(conn.scalars(sa.select(t.c.prompt)))
    assert not any("\x00" in p for p in stored) and len(stored) == len(set(stored))  # nothing refused was stored
