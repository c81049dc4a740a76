"""A small client of Airflow's REST API (``/api/v2``) for the command line and the MCP server.

No Airflow import: it speaks HTTP to a running API server (``airflow api-server`` or ``airflow standalone``).
Where it is: ``$FTOPS_AIRFLOW_URL``, else ``http://127.0.0.1:$AIRFLOW__API__PORT`` (default 8080). How it
signs in, first that applies:

1. ``$FTOPS_AIRFLOW_TOKEN``: a bearer token (e.g. from ``POST /auth/token`` done elsewhere);
2. ``$FTOPS_AIRFLOW_USERNAME`` and ``$FTOPS_AIRFLOW_PASSWORD``: ``POST /auth/token`` (simple auth manager with
   login on);
3. ``GET /auth/token``: the admin token a server with login off hands anyone on this machine.

Tokens and passwords are never logged and never part of an error message.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import httpx

START_HINT = "start it with `make ui`"
RUN_ID_CHARS = "A-Za-z0-9_.~:+-"
"""Characters Airflow allows in a run id."""


class AirflowUnavailableError(ConnectionError):
    """The REST API did not answer (refused, timed out, DNS): the message is one line for people."""


class AirflowAPIError(RuntimeError):
    """The REST API answered with an error (bad credentials, unknown DAG, a refused trigger form).

    Attributes:
        status_code: The HTTP status.
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def airflow_url() -> str:
    """``$FTOPS_AIRFLOW_URL``, else ``http://127.0.0.1:<$AIRFLOW__API__PORT or 8080>``, without a trailing ``/``."""
    url = os.environ.get("FTOPS_AIRFLOW_URL") or f"http://127.0.0.1:{os.environ.get('AIRFLOW__API__PORT') or 8080}"
    return url.rstrip("/")


class AirflowAPI:
    """The few REST calls FT-Ops makes: list DAG runs, read a DAG, trigger a run.

    Args:
        url: The API server's base URL (default :func:`airflow_url`).
        token: A bearer token (default ``$FTOPS_AIRFLOW_TOKEN``).
        username: With ``password``, sign in through ``POST /auth/token`` (default ``$FTOPS_AIRFLOW_USERNAME``).
        password: Default ``$FTOPS_AIRFLOW_PASSWORD``.
        timeout: Seconds per request.
        transport: An httpx transport (tests).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or airflow_url()).rstrip("/")
        self._token = token or os.environ.get("FTOPS_AIRFLOW_TOKEN") or None
        self._username = username or os.environ.get("FTOPS_AIRFLOW_USERNAME") or None
        self._password = password or os.environ.get("FTOPS_AIRFLOW_PASSWORD") or None
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def __repr__(self) -> str:  # never the token
        return f"AirflowAPI({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            why = "connection refused" if "refused" in str(exc).lower() else f"cannot connect: {type(exc).__name__}"
            message = f"Airflow REST API at {self.url}: unreachable ({why}) — {START_HINT}"
            raise AirflowUnavailableError(message) from None
        except httpx.TimeoutException:
            raise AirflowUnavailableError(f"Airflow REST API at {self.url}: unreachable (no answer within "
                                          f"{self.timeout:g} s) — {START_HINT}") from None  # fmt: skip
        except httpx.HTTPError as exc:
            raise AirflowUnavailableError(f"Airflow REST API at {self.url}: unreachable ({type(exc).__name__}) — "
                                          f"{START_HINT}") from None  # fmt: skip

    def _bearer(self) -> str:
        if self._token:
            return self._token
        if self._username and self._password:
            r = self._send("POST", "/auth/token", json={"username": self._username, "password": self._password})
            how = f"signing in as {self._username!r} (FTOPS_AIRFLOW_USERNAME/PASSWORD)"
        else:
            r = self._send("GET", "/auth/token")
            how = "asking for a token with login off (set FTOPS_AIRFLOW_TOKEN or FTOPS_AIRFLOW_USERNAME/PASSWORD)"
        if r.status_code >= 400:
            raise AirflowAPIError(f"Airflow REST API at {self.url} refused {how}: HTTP {r.status_code}", r.status_code)
        try:
            self._token = str(r.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            message = f"Airflow REST API at {self.url} gave no access_token when {how}"
            raise AirflowAPIError(message, r.status_code) from None
        return self._token

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._send(method, f"/api/v2{path}", headers={"Authorization": f"Bearer {self._bearer()}"}, **kwargs)
        if r.status_code >= 400:
            message = f"Airflow REST API {method} {path}: HTTP {r.status_code}: {_detail(r)}"
            raise AirflowAPIError(message, r.status_code)
        return r.json()

    # -- calls --------------------------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict[str, Any]:
        """The DAG's record (``is_paused``, ``next_dagrun_run_after``...)."""
        return dict(self._api("GET", f"/dags/{dag_id}"))

    def dag_runs(
        self,
        dag_id: str,
        *,
        states: tuple[str, ...] = (),
        end_date_gte: datetime | None = None,
        limit: int = 100,
        order_by: str = "-run_after",
    ) -> list[dict[str, Any]]:
        """Runs of a DAG, newest first by default (``dag_run_id``, ``state``, ``conf``, ``start_date``...).

        Args:
            dag_id: The DAG.
            states: Only runs in these states (``queued``, ``running``, ``success``, ``failed``).
            end_date_gte: Only runs that ended at or after this time.
            limit: At most this many (the server may cap it further: ``[api] maximum_page_limit``).
            order_by: A field, ``-`` for descending.
        """
        params: list[tuple[str, str | int]] = [("limit", limit), ("order_by", order_by)]
        params += [("state", s) for s in states]
        if end_date_gte is not None:
            params.append(("end_date_gte", end_date_gte.isoformat()))
        return list(self._api("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self._api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def trigger(self, dag_id: str, conf: dict[str, Any], *, run_id: str | None = None) -> dict[str, Any]:
        """Start a manual run of ``dag_id`` with ``conf`` (checked against the DAG's params by the server).

        Returns:
            The run's record (``dag_run_id``, ``state``, ``conf``...).

        Raises:
            AirflowAPIError: The server refused (unknown DAG, a conf its form rejects, a run id in use).
            AirflowUnavailableError: The server did not answer.
        """
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return dict(self._api("POST", f"/dags/{dag_id}/dagRuns", json=body))


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    return str(detail)[:500]
