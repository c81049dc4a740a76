"""The one way FT-Ops opens a warehouse: SQLAlchemy engines that never write row values into logs.

SQLAlchemy puts a failed statement's parameters into the exception text (``[parameters: ...]``), so a refused
insert would log prompts and user ids, other users' rows of the same batch included. ``hide_parameters=True``
keeps them out of every message and log line.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

PG_CONNECT_TIMEOUT_S = 5  # a warehouse server that does not answer: fail in seconds (psycopg waits for the OS)


def create_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """``sqlalchemy.create_engine`` with ``hide_parameters=True`` and a PostgreSQL connect timeout.

    Args:
        url: The warehouse URL.
        **kwargs: More engine options (``pool_pre_ping``, ``connect_args``...); a given ``connect_timeout`` wins.

    Returns:
        The engine.
    """
    kwargs["hide_parameters"] = True
    if sa.make_url(url).get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **kwargs.get("connect_args", {})}
    return sa.create_engine(url, **kwargs)
