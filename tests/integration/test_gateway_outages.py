"""A real ``ftops serve`` whose MLflow server first answers 5 s late, then refuses connections, then returns.

The gateway reaches a real ``mlflow server`` (SQLite store) through an HTTP proxy in this test that counts
every registry request and can delay or refuse them. Throughout: ``/healthz`` answers in < 100 ms (measured on
every call, from a thread of its own), every call is answered on the last routing read, and the registry sees
at most one alias read per task type per ``alias_ttl_s`` (counted by the proxy while it delays, and from the
gateway's one warning per failed read over the whole outage). Afterwards a canary taking 100 % of the traffic,
made during the outage, is picked up.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from ftops.deployment import rollout
from tests.serving_support import ServeProcess, free_port, register_local_version

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASK = "outage"
TTL_S = 1.0


class RegistryProxy:
    """An HTTP proxy to the MLflow server: ``mode`` is ``pass``, ``delay`` (5 s, then pass) or ``refuse``
    (the port closed: connection refused). ``reads`` holds ``(time, path)`` of every alias read that arrived."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.port, self.mode = upstream, free_port(), "pass"
        self.reads: list[tuple[float, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if "registered-models/get" in self.path:  # one per alias lookup
                    proxy.reads.append((time.monotonic(), self.path))
                if proxy.mode == "delay":
                    time.sleep(5)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = urllib.request.Request(proxy.upstream + self.path, data=body or None, method=self.command,
                                                 headers={k: v for k, v in self.headers.items() if k.lower() != "host"})  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - the local MLflow server
                        status, payload, ctype = r.status, r.read(), r.headers.get("content-type", "")
                except urllib.error.HTTPError as e:
                    status, payload, ctype = e.code, e.read(), e.headers.get("content-type", "")
                try:
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (its timeout)

            do_GET = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def up(self) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(tmp / "mlflow.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{tmp / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / "mlflow.log").read_text()[-3000:])
        time.sleep(0.3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", url)
        mp.setenv("FTOPS_ARTIFACT_ROOT", (tmp / "artifacts").as_uri())
        yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _watch_healthz(url: str, stop: threading.Event, took: list[float]) -> None:
    with httpx.Client(timeout=5) as c:
        while not stop.is_set():
            started = time.perf_counter()
            ok = c.get(f"{url}/healthz").status_code == 200
            took.append(time.perf_counter() - started if ok else float("inf"))
            time.sleep(0.05)


def test_a_slow_then_refusing_registry_never_stalls_the_gateway(mlflow_server: str, tmp_path: Path, tiny_base: Path) -> None:
    base = tiny_base
    champion = register_local_version(TASK, base, "outage-champion")
    assert rollout.deploy(TASK, champion, 10) == "champion"
    proxy = RegistryProxy(mlflow_server)
    proxy.up()
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy.port}", "FTOPS_ARTIFACT_ROOT": os.environ["FTOPS_ARTIFACT_ROOT"]}
    serving = {"alias_ttl_s": TTL_S, "registry_timeout_s": 2, "flush_every_s": 0.5}
    took: list[float] = []
    stop = threading.Event()
    with ServeProcess(tmp_path, warehouse=f"sqlite:///{tmp_path / 'wh.db'}", serving=serving, env=env) as gw, \
            httpx.Client(base_url=gw.url, timeout=30) as client:  # fmt: skip
        def ask(i: int) -> str:
            done = client.post("/v1/chat/completions", json={
                "model": f"ftops/{TASK}", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 4,
                "user": f"u{i}"})  # fmt: skip
            assert done.status_code == 200, done.text
            return done.headers["x-ftops-model-version"]

        assert ask(0) == f"ftops-{TASK}/{champion}"
        watcher = threading.Thread(target=_watch_healthz, args=(gw.url, stop, took))
        watcher.start()
        try:
            windows: dict[str, tuple[float, float]] = {}
            served: dict[str, set[str]] = {}
            models_s: list[float] = []
            for mode, seconds in (("delay", 8.0), ("refuse", 6.0)):
                proxy.mode = mode
                if mode == "refuse":
                    proxy.down()
                started = time.monotonic()
                served[mode] = set()
                i = 0
                while time.monotonic() - started < seconds:
                    i += 1
                    served[mode].add(ask(i))
                    if i == 2:  # the model list comes from the cache too
                        t0 = time.perf_counter()
                        listed = client.get("/v1/models")
                        models_s.append(time.perf_counter() - t0)
                        assert [m["id"] for m in listed.json()["data"]] == [f"ftops/{TASK}"], listed.text
                    if mode == "delay" and i == 3:  # a canary with all the traffic, made during the outage
                        canary = register_local_version(TASK, base, "outage-canary")
                        assert rollout.deploy(TASK, canary, 100) == "canary"
                    time.sleep(0.1)
                windows[mode] = (started, time.monotonic())
            proxy.mode = "pass"
            proxy.up()
            back = time.monotonic()
            seen: set[str] = set()
            while f"ftops-{TASK}/{canary}" not in seen and time.monotonic() - back < 30:
                seen.add(ask(0))
                time.sleep(0.2)
            picked_up = time.monotonic() - back
        finally:
            stop.set()
            watcher.join(timeout=30)
    assert served == {"delay": {f"ftops-{TASK}/{champion}"}, "refuse": {f"ftops-{TASK}/{champion}"}}
    assert f"ftops-{TASK}/{canary}" in seen, f"the canary was not picked up within 30 s: {seen}"
    outage = [t for t, path in proxy.reads if windows["delay"][0] <= t <= windows["refuse"][1] and f"ftops-{TASK}" in path]
    gaps = [b - a for a, b in zip(outage, outage[1:], strict=False)]
    # refused connections never reach the proxy: its reads are those of the delay phase (each waits out the
    # gateway's 2 s timeout, then one ttl) -- at most one per task type per ttl; the gateway's log counts both
    assert outage and all(g >= TTL_S * 0.9 for g in gaps), gaps
    assert len(outage) <= (windows["delay"][1] - windows["delay"][0]) / TTL_S + 1
    # every failed read, refused ones included, logs one warning in the gateway: at most one per ttl in all
    failed = (tmp_path / "gateway.log").read_text().count(f"Registry unavailable; routing {TASK} on aliases")
    outage_s = windows["refuse"][1] - windows["delay"][0]
    assert 1 <= failed <= outage_s / TTL_S + 1, (failed, outage_s)
    assert len(models_s) == 2 and max(models_s) < 1, models_s  # not the 2 s registry timeout, nor 5 s of delay
    assert took and max(took) < 0.1, f"/healthz max {max(took) * 1000:.0f} ms over {len(took)} calls"
    print(f"/healthz: {len(took)} calls, median {sorted(took)[len(took) // 2] * 1000:.1f} ms, max "
          f"{max(took) * 1000:.1f} ms; registry alias reads in the 8 s delay phase: {len(outage)} "
          f"(gaps {[round(g, 1) for g in gaps]} s); failed reads over the {outage_s:.0f} s outage: {failed}; "
          f"canary picked up {picked_up:.1f} s after the registry came back")
