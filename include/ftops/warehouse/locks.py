"""Installation-wide locks held in the warehouse.

The versioning lock: publishing a dataset version and erasing a user never run at the same time.

Inside Airflow both run in the one-slot ``ftops_versioning`` pool. ``ftops erase`` and the MCP ``erase_user``
run outside Airflow, where no pool applies, so both sides also take this lock, held in the warehouse that they
share (every worker and the command line reach the same one):

* PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a dedicated connection; the server
  releases it if the holder dies;
* SQLite (one machine by nature): an exclusive ``flock`` on ``<database file>.versioning.lock``, also released
  by the kernel when the holder dies;
* any other warehouse: the same file lock under ``FTOPS_HOME`` (one machine only: keep the CLI on a worker).

:func:`warehouse_lock` is the same mechanism under another name (another advisory key, another file), for short
critical sections such as the teacher's budget (:mod:`ftops.curation.teacher`: two task types curated at once
must not both spend the day's last rows).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

log = logging.getLogger(__name__)
ADVISORY_KEY = 0x46_54_4F_50_53_56  # "FTOPSV": one bigint the whole installation agrees on
VERSIONING = "versioning"


class VersioningLockTimeout(RuntimeError):
    """Another publish or erasure held the versioning lock for longer than the wait allowed."""


def _advisory_key(name: str) -> int:
    if name == VERSIONING:
        return ADVISORY_KEY
    return int.from_bytes(hashlib.sha256(f"ftops-lock:{name}".encode()).digest()[:8], "big", signed=True)


def _lock_file(engine: sa.Engine, name: str = VERSIONING) -> Path:
    from ftops.core.config import ftops_home

    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        return Path(database).with_name(f"{Path(database).name}.{name}.lock")
    return ftops_home() / f"{name}.lock"


@contextmanager
def versioning_lock(engine: sa.Engine, *, wait_s: float = 900, what: str = "versioning") -> Iterator[None]:
    """Hold the installation's versioning lock for the block.

    Args:
        engine: The warehouse.
        wait_s: How long to wait for a holder to finish.
        what: What is waiting, for the log line.

    Raises:
        VersioningLockTimeout: The lock stayed taken for ``wait_s``.
    """
    with warehouse_lock(engine, VERSIONING, wait_s=wait_s, what=what):
        yield


@contextmanager
def warehouse_lock(engine: sa.Engine, name: str, *, wait_s: float = 900, what: str = "") -> Iterator[None]:
    """Hold the installation's lock called ``name`` for the block (see the module docstring for how).

    Raises:
        VersioningLockTimeout: The lock stayed taken for ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    said = False
    what = what or name
    key = _advisory_key(name)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            while not conn.scalar(sa.text("select pg_try_advisory_lock(:k)"), {"k": key}):
                said = _wait(deadline, what, said, name)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    path = _lock_file(engine, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                said = _wait(deadline, what, said, name)
        yield
    finally:
        os.close(fd)  # releases the flock


def _wait(deadline: float, what: str, said: bool, name: str) -> bool:
    if time.monotonic() >= deadline:
        if name == VERSIONING:
            raise VersioningLockTimeout(f"{what}: another publish or erasure holds the versioning lock; try again later")
        raise VersioningLockTimeout(f"{what}: another run holds the {name} lock; try again later")
    if not said:
        log.info("%s waits for the %s lock (%s)", what, name,
                 "a publish or an erasure is running" if name == VERSIONING else "another run holds it")
    time.sleep(0.5)
    return True
