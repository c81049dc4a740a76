"""The gateway under faults: killed with SIGKILL mid-traffic, and with its warehouse unreachable for a while.

Both check the same promise: every call the gateway answered ends up in the warehouse exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
import yaml

from ftops.core.config import DEFAULT_CONFIG_PATH, ServingConfig
from ftops.deployment import rollout
from ftops.serving.gateway import build_gateway
from ftops.warehouse.schema import log_tables
from tests.serving_support import GatewayServer, free_port, register_local_version

pytestmark = pytest.mark.usefixtures("mlflow_store", "one_torch_thread")
TASK = "faults"


@pytest.fixture(scope="module")
def champion(mlflow_store: None, tiny_base: Path) -> str:
    version = register_local_version(TASK, tiny_base, "faults-champion")
    assert rollout.deploy(TASK, version, 10) == "champion"
    return version


def _ids_in(engine: sa.Engine, table: str = "interactions") -> list[str]:
    _, t, _, _ = log_tables(table)
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(t.c.id)))


def _wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            return dict(httpx.get(f"{url}/healthz", timeout=2).json())
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up")


def _ask(base_url: str, answered: list[str], stop: threading.Event, user: str) -> None:
    client = openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=30)
    i = 0
    while not stop.is_set():
        i += 1
        try:
            done = client.chat.completions.create(model=f"ftops/{TASK}", user=user, max_tokens=6,
                                                  messages=[{"role": "user", "content": f"{user} asks {i}"}])  # fmt: skip
        except openai.APIError:
            time.sleep(0.05)  # the gateway is down: what was not answered need not be logged
            continue
        answered.append(done.id)


def test_a_gateway_killed_mid_traffic_loses_no_answered_call(champion: str, tmp_path: Path) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["serving"]["flush_every_s"] = 3600  # nothing flushed before the kill: every row is in the spool
    (tmp_path / "ftops.yaml").write_text(yaml.safe_dump(config))
    warehouse = f"sqlite:///{tmp_path / 'warehouse.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FTOPS_HOME": str(tmp_path / "home"), "FTOPS_CONFIG": str(tmp_path / "ftops.yaml"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "ftops.cli", "serve", "--port", str(port), "--warehouse-url", warehouse]
    log_file = open(tmp_path / "gateway.log", "ab")  # noqa: SIM115 - closed below
    gateway = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    answered: list[str] = []
    stop = threading.Event()
    users = [threading.Thread(target=_ask, args=(f"{url}/v1", answered, stop, f"u{k}")) for k in range(4)]
    try:
        _wait_healthy(url, gateway)
        for u in users:
            u.start()
        while len(answered) < 40:
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            time.sleep(0.05)
        gateway.send_signal(signal.SIGKILL)  # mid-traffic: requests in flight never get their answer
        gateway.wait(timeout=30)
        killed_after = len(answered)
        spool = tmp_path / "home" / "spool" / "interactions"
        assert any(p.stat().st_size for p in spool.glob("*.jsonl"))  # the answered rows wait there
        stop.set()
        for u in users:
            u.join(timeout=60)
        assert len(answered) == killed_after  # nothing answered while it was dead
        gateway = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _wait_healthy(url, gateway)  # the start replays the spool into the warehouse
        gateway.send_signal(signal.SIGTERM)  # a clean stop flushes what is left (uvicorn then re-raises SIGTERM)
        assert gateway.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "gateway.log").read_text()
    finally:
        stop.set()
        if gateway.poll() is None:
            gateway.kill()
        log_file.close()
    ids = _ids_in(sa.create_engine(warehouse))
    assert len(ids) == len(set(ids))
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} of {len(answered)} answered calls are not in the warehouse"
    print(f"{len(answered)} answered before the kill, all in the warehouse once ({len(ids)} rows in all)")


class Proxy:
    """A TCP forwarder to PostgreSQL that can be cut (the warehouse unreachable) and restored."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.port = upstream, free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
            if self._listener is not None:
                socks.append(self._listener)
                self._listener = None
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_the_gateway_keeps_serving_while_the_warehouse_is_down_and_catches_up(
    champion: str, postgres_url: str, tmp_path: Path
) -> None:
    url = sa.make_url(postgres_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.up()
    engine = sa.create_engine(url.set(host="127.0.0.1", port=proxy.port), pool_pre_ping=True)
    table = f"interactions_down_{os.getpid()}"
    gateway = build_gateway(ServingConfig(flush_every_s=0.2), engine, table, spool_dir=str(tmp_path / "spool"))
    answered: list[str] = []
    try:
        with GatewayServer(gateway) as server:
            client = openai.OpenAI(api_key="unused", base_url=server.base_url, max_retries=0)

            def ask(n: int) -> list[str]:
                return [client.chat.completions.create(model=f"ftops/{TASK}", max_tokens=4,
                                                       messages=[{"role": "user", "content": f"q{i}"}]).id
                        for i in range(n)]  # fmt: skip

            answered += ask(5)
            gateway.logger.flush()
            assert set(answered) <= set(_ids_in(engine, table))
            proxy.down()
            during = ask(10)  # every call answered while the warehouse is unreachable
            answered += during
            time.sleep(1)  # several flush attempts fail
            health = httpx.get(f"{server.url}/healthz").json()
            assert health["spooled_rows"] >= len(during)
            refused = httpx.post(f"{server.base_url}/feedback", json={"id": during[0], "rating": 5})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "warehouse_unavailable"
            proxy.up()
            deadline = time.monotonic() + 60
            while httpx.get(f"{server.url}/healthz").json()["spooled_rows"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert httpx.post(f"{server.base_url}/feedback", json={"id": during[0], "rating": 5}).status_code == 200
        ids = _ids_in(engine, table)
        assert len(ids) == len(set(ids)) and set(answered) <= set(ids), "answered calls missing after the outage"
    finally:
        proxy.down()
        log_tables(table)[0].drop_all(sa.create_engine(postgres_url))
