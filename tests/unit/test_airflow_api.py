"""The REST client's sign-in order and its errors, against httpx's mock transport standing in for Airflow's
API server (the real one answers in ``tests/integration/test_airflow_requests.py``)."""

from __future__ import annotations

import json

import httpx
import pytest

from ftops.core.airflow_api import AirflowAPI, AirflowAPIError, AirflowUnavailableError, airflow_url

SECRET = "s3cret-pass"


def _server(seen: list[httpx.Request], *, login_status: int = 201) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/auth/token":
            return httpx.Response(login_status, json={"access_token": "tok-from-server"})
        if request.headers.get("authorization") not in ("Bearer tok-from-env", "Bearer tok-from-server"):
            return httpx.Response(401, json={"detail": "Invalid JWT token"})
        if request.method == "POST":
            run_id = json.loads(request.content)["dag_run_id"]
            return httpx.Response(200, json={"dag_run_id": run_id, "state": "queued"})
        return httpx.Response(200, json={"dag_runs": [{"dag_run_id": "r1", "state": "running"}], "total_entries": 1})

    return httpx.MockTransport(handle)


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FTOPS_AIRFLOW_URL", "FTOPS_AIRFLOW_TOKEN", "FTOPS_AIRFLOW_USERNAME", "FTOPS_AIRFLOW_PASSWORD",
                "AIRFLOW__API__PORT"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert airflow_url() == "http://127.0.0.1:8080"
    monkeypatch.setenv("AIRFLOW__API__PORT", "9090")
    assert airflow_url() == "http://127.0.0.1:9090"
    monkeypatch.setenv("FTOPS_AIRFLOW_URL", "https://airflow.example.com/")
    assert airflow_url() == "https://airflow.example.com"


def test_login_off_asks_for_a_token_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    api = AirflowAPI("http://af", transport=_server(seen))
    assert api.dag_runs("ftops_finetune", states=("queued", "running"))[0]["dag_run_id"] == "r1"
    api.trigger("ftops_governor", {"task_type": "t"}, run_id="mcp__t__1")
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", "/auth/token"), ("GET", "/api/v2/dags/ftops_finetune/dagRuns"),
        ("POST", "/api/v2/dags/ftops_governor/dagRuns"),
    ]  # fmt: skip
    assert seen[1].url.params.get_list("state") == ["queued", "running"]
    assert json.loads(seen[2].content) == {"logical_date": None, "conf": {"task_type": "t"}, "dag_run_id": "mcp__t__1"}


def test_a_token_from_the_environment_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTOPS_AIRFLOW_TOKEN", "tok-from-env")
    seen: list[httpx.Request] = []
    AirflowAPI("http://af", transport=_server(seen)).dag_runs("ftops_finetune")
    assert [r.url.path for r in seen] == ["/api/v2/dags/ftops_finetune/dagRuns"]
    assert "tok-from-env" not in repr(AirflowAPI("http://af"))


def test_username_and_password_sign_in_and_a_refusal_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTOPS_AIRFLOW_USERNAME", "ops")
    monkeypatch.setenv("FTOPS_AIRFLOW_PASSWORD", SECRET)
    seen: list[httpx.Request] = []
    AirflowAPI("http://af", transport=_server(seen)).dag_runs("ftops_finetune")
    assert (seen[0].method, json.loads(seen[0].content)) == ("POST", {"username": "ops", "password": SECRET})
    with pytest.raises(AirflowAPIError) as refused:
        AirflowAPI("http://af", transport=_server([], login_status=401)).dag_runs("ftops_finetune")
    assert refused.value.status_code == 401 and "'ops'" in str(refused.value) and SECRET not in str(refused.value)


def test_an_unreachable_server_is_one_clear_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(AirflowUnavailableError) as down:
        AirflowAPI("http://127.0.0.1:1", transport=httpx.MockTransport(refuse)).dag_runs("ftops_finetune")
    assert str(down.value) == ("Airflow REST API at http://127.0.0.1:1: unreachable (connection refused) — "
                               "start it with `make ui`")  # fmt: skip
