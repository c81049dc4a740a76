"""Airflow glue shared by the FT-Ops DAGs: default args, tags, pools, the dataset Asset, config snapshots.

Cheap to import: DAG files are parsed every 30 s, so nothing here opens a connection or imports a heavy
module at import time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseHook
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule
from airflow.sdk.exceptions import AirflowNotFoundException

from ftops.core.config import FtopsConfig, apply_overrides, ftops_home, load_config
from ftops.core.names import TASK_TYPE_PATTERN

if TYPE_CHECKING:
    import sqlalchemy as sa
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

# Errors about the request (a missing dataset version, a bad param, an unknown base model) fail at once:
# retrying them only delays the message. Everything else (a busy warehouse, a flaky remote) is retried.
NOT_RETRYABLE = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[LookupError, ValueError, FileNotFoundError, NotImplementedError],
            action=RetryAction.FAIL,
            reason="bad input or a missing object: a retry cannot fix it",
        )
    ]
)


def log_worker(context: Any) -> None:
    """A line of every task's log, before the task starts: the worker that runs it (with the CeleryExecutor, which machine and
    which queue; the worker's name is ``hostname_callable``'s, ``worker_hostname`` below where it is set)."""
    from airflow.sdk.api.client import get_hostname

    task = context["task"]
    log.info("FT-Ops task %s runs on worker %s (queue %s, FTOPS_HOME %s)", task.task_id, get_hostname(),
             task.queue, ftops_home())  # fmt: skip


def worker_hostname() -> str:
    """A ``[core] hostname_callable`` for several workers on one host: ``$FTOPS_WORKER_NAME``, else the FQDN.

    Task instances record it as their ``hostname`` (the UI and REST API show which worker ran what);
    machines of their own need none of this.
    """
    import os
    import socket

    return os.environ.get("FTOPS_WORKER_NAME") or socket.getfqdn()


def training_queue() -> dict[str, str]:
    """``{"queue": training.queue}`` for ftops_finetune's default args (read when the DAG is parsed), or
    nothing: Airflow's default queue."""
    queue = load_config().training.queue
    return {"queue": queue} if queue else {}


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "ftops",
    "on_execute_callback": log_worker,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "retry_policy": NOT_RETRYABLE,
}
# Every DAG's start: time-zone aware (a naive datetime would be read in the deployment's default time zone).
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
# JSON-schema pattern of every task_type param: the trigger form refuses a name that could leave a folder.
TASK_TYPE = {"pattern": TASK_TYPE_PATTERN}
TAGS = {
    "curation": ["ftops", "curation"],
    "governance": ["ftops", "governance"],
    "training": ["ftops", "training"],
    "deployment": ["ftops", "deployment"],
}
TRAINING_POOL = "ftops_training"  # one slot: training saturates the worker's cores
VERSIONING_POOL = "ftops_versioning"  # one slot: DVC holds a repo lock, writers must be serialised
ALIASES_POOL = "ftops_aliases"  # one slot: registry alias writes are last-writer-wins, every DAG's writers serialised

# One event per curated dataset; its extra names the task type, version, row counts and content hash.
DATASETS = Asset(name="ftops_datasets", uri="ftops://datasets")


def resolve_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge a run's trigger-form params into the YAML config and return the validated snapshot as JSON."""
    config = apply_overrides(load_config(), overrides)
    return config.model_dump(mode="json")


def snapshot(config: dict[str, Any]) -> FtopsConfig:
    """Re-validate a config snapshot handed over through XCom."""
    return FtopsConfig.model_validate(config)


def warehouse_engine(conn_id: str) -> sa.Engine:
    """SQLAlchemy engine for the warehouse connection.

    Without a connection of that id, the embedded default is used: a SQLite file under ``FTOPS_HOME``.
    """
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        from ftops.core.files import private_file
        from ftops.warehouse.engines import create_engine

        path = private_file(ftops_home() / "warehouse.db")  # 0600 in a 0700 FTOPS_HOME when made here
        log.info("No connection %r: using the embedded SQLite warehouse %s", conn_id, path)
        # task types curate in parallel: wait for the file lock rather than fail after SQLite's default 5 s
        return create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})
    # hide_parameters: a failed statement's error text (and so the task log) never carries row values
    return conn.get_hook().get_sqlalchemy_engine(engine_kwargs={"hide_parameters": True})


def _api_settings(conn: Connection) -> dict[str, Any]:
    """Key and base URL of an OpenAI-compatible API from its connection: key = password, base URL = host (or
    ``extra.openai_client_kwargs.base_url``, as the OpenAI provider reads it)."""
    base_url = conn.host or (conn.extra_dejson.get("openai_client_kwargs") or {}).get("base_url")
    # An empty password is an error, never a fallback to the worker's OPENAI_API_KEY.
    return {"api_key": conn.password or "", "base_url": base_url,
            "key_source": f"the password of Airflow connection {conn.conn_id!r}"}  # fmt: skip


def openai_client(conn_id: str) -> Any:
    """An ``openai.OpenAI`` client for the API of connection ``conn_id`` (see :func:`_api_settings`).

    Raises:
        APIRequestError: The connection has no password (the key).
    """
    from ftops.core.openai_api import make_client

    return make_client(**_api_settings(BaseHook.get_connection(conn_id)))


async def async_openai_client(conn_id: str) -> Any:
    """An ``openai.AsyncOpenAI`` client for connection ``conn_id``, read without blocking the event loop
    (``BaseHook.aget_connection``: in a triggerer it asks the API server, as tasks do).

    Raises:
        APIRequestError: The connection has no password (the key).
    """
    import asyncio
    import importlib

    from ftops.core.openai_api import make_async_client

    conn = await BaseHook.aget_connection(conn_id)
    await asyncio.to_thread(importlib.import_module, "openai")  # ~1 s the first time: not on the event loop
    return make_async_client(**_api_settings(conn))
