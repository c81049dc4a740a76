"""The local UI without login stays local: `make demo` and `make ui` bind the API server to 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _airflow_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__API__", "AIRFLOW__CORE__SIMPLE"))}
    env.update(overrides)
    out = subprocess.run(["bash", "-c", '. scripts/env.sh && env'], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_login_off_binds_localhost_even_when_asked_for_every_interface() -> None:
    env = _airflow_env(AIRFLOW__API__HOST="0.0.0.0")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "True"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"


def test_login_on_leaves_the_host_to_the_user() -> None:
    env = _airflow_env(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False", AIRFLOW__API__HOST="0.0.0.0")
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"


@pytest.mark.parametrize("script", ["scripts/demo.sh", "Makefile"])
def test_the_ui_commands_go_through_env_sh(script: str) -> None:
    text = (ROOT / script).read_text()
    assert "scripts/env.sh" in text and "airflow standalone" in text


def test_airflow_reads_the_host_from_the_environment() -> None:
    """What standalone's api-server binds to: its --host default is the [api] host option."""
    env = _airflow_env()
    out = subprocess.run(["airflow", "config", "get-value", "api", "host"], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.strip()  # fmt: skip
    assert out == "127.0.0.1"
