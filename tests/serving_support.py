"""Test support for the gateway: registered versions with real weights, and a gateway on a free port.

``register_local_version`` logs a real model folder as a training run's ``full_model`` artifact and registers
it, as a fine-tune leaves it; ``register_api_version`` does the same for a model fine-tuned through an
OpenAI-compatible API. ``GatewayServer`` runs :func:`ftops.serving.gateway.create_app` under uvicorn in a
thread (its lifespan starts the spool flushing) and stops it on exit.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import mlflow

from ftops.registry import models as registry
from ftops.serving.gateway import Gateway, create_app


def register_local_version(task_type: str, model_dir: Path, key: str, tags: dict[str, str] | None = None) -> str:
    """A registered version whose run holds ``model_dir`` as its fully fine-tuned weights."""
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tags({**registry.run_key_tags(key), "backend": "huggingface", "base_model": str(model_dir),
                         "ftops.weights": "full_model", "task_type": task_type})  # fmt: skip
        mlflow.log_artifacts(str(model_dir), "full_model")
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/full_model", tags or {})


def register_api_version(task_type: str, model: str, key: str) -> str:
    """A registered version served by an OpenAI-compatible API under the model id ``model``."""
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.set_tags({**registry.run_key_tags(key), "backend": "openai", "base_model": "gpt-4o-mini-2024-07-18",
                         "openai.fine_tuned_model": model, "task_type": task_type})  # fmt: skip
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/model", {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayServer:
    """``with GatewayServer(gateway) as server: openai.OpenAI(base_url=server.base_url, ...)``."""

    def __init__(self, gateway: Gateway, port: int | None = None) -> None:
        import uvicorn

        self.gateway = gateway
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        config = uvicorn.Config(create_app(gateway), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


class ServeProcess:
    """A real ``ftops serve`` subprocess on a free port with its own config file and ``FTOPS_HOME``.

    ``with ServeProcess(tmp, serving={...}, warehouse=url, env={...}) as gw: httpx.get(f"{gw.url}/healthz")``;
    its output goes to ``tmp/gateway.log`` (shown when it does not come up).
    """

    def __init__(self, tmp: Path, *, warehouse: str, serving: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, table: str | None = None) -> None:  # fmt: skip
        import os
        import sys

        import yaml

        from ftops.core.config import DEFAULT_CONFIG_PATH

        config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
        config["serving"].update(serving or {})
        if table:
            config["interactions_table"] = table
        (tmp / "ftops.yaml").write_text(yaml.safe_dump(config))
        self.port, self.tmp = free_port(), tmp
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FTOPS_HOME": str(tmp / "home"), "FTOPS_CONFIG": str(tmp / "ftops.yaml"),
                    "OMP_NUM_THREADS": "1", **(env or {})}  # fmt: skip
        self.command = [sys.executable, "-m", "ftops.cli", "serve", "--port", str(self.port), "--warehouse-url",
                        warehouse]  # fmt: skip

    def __enter__(self) -> ServeProcess:
        import subprocess

        import httpx

        self.log = open(self.tmp / "gateway.log", "ab")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ftops serve exited: {(self.tmp / 'gateway.log').read_text()[-3000:]}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("ftops serve did not come up")

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - it would not stop: kill it
                self.proc.kill()
        self.log.close()


def aliases(task_type: str) -> tuple[str | None, str | None, str | None]:
    """The (champion, canary, previous) versions of a task type's registered model."""
    def v(alias: str) -> str | None:
        mv = registry.alias_version(task_type, alias)
        return None if mv is None else str(mv.version)

    return v(registry.CHAMPION), v(registry.CANARY), v(registry.PREVIOUS)


def version_tags(task_type: str, version: str) -> dict[str, str]:
    """A registered version's tags."""
    return dict(registry.client().get_model_version(registry.model_name(task_type), version).tags)

