"""What the ``ftops`` sub-commands share: the warehouse they talk to and argument checks."""

from __future__ import annotations

import argparse
import os

from ftops.core.config import ftops_home
from ftops.core.names import check_task_type


def warehouse_url(explicit: str | None = None) -> str:
    """The warehouse as a SQLAlchemy URL.

    Order: ``--warehouse-url``, ``$FTOPS_WAREHOUSE_URL``, the Airflow connection URI in
    ``$AIRFLOW_CONN_FTOPS_WAREHOUSE`` (so the CLI and the DAGs see the same warehouse), else the embedded
    SQLite file under ``FTOPS_HOME``, exactly as the DAGs default.
    """
    url = explicit or os.environ.get("FTOPS_WAREHOUSE_URL") or os.environ.get("AIRFLOW_CONN_FTOPS_WAREHOUSE")
    if not url:
        from ftops.core.files import private_file

        return f"sqlite:///{private_file(ftops_home() / 'warehouse.db')}"  # 0600 in a 0700 FTOPS_HOME: it holds prompts
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    return url


def engine_of(url: str):  # noqa: ANN202 - sqlalchemy.Engine, imported lazily
    from ftops.warehouse.engines import create_engine

    return create_engine(url, pool_pre_ping=True)  # hides parameters; a 5 s PostgreSQL connect timeout


def task_type_arg(value: str) -> str:
    try:
        return check_task_type(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
