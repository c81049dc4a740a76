"""Files and folders that only their owner may read: the spool, the embedded stores under ``FTOPS_HOME``.

Modes are set with ``chmod`` after creating, so a permissive umask cannot widen them.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: str | Path, *, force: bool = False) -> Path:
    """Create a folder (and its missing parents) with mode 0700.

    Args:
        path: The folder.
        force: Also set 0700 on the folder when it already exists (a folder FT-Ops owns, such as the spool);
            otherwise an existing folder keeps its mode (a person may have shared it on purpose).

    Returns:
        The folder.
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:  # made by another process meanwhile: its mode is its own
            continue
        os.chmod(p, 0o700)
    if force and path not in missing:
        os.chmod(path, 0o700)
    return path


def private_file(path: str | Path) -> Path:
    """Create an empty file with mode 0600 unless it exists (an empty file is a valid empty SQLite database).

    Args:
        path: The file; its folder is made with :func:`private_dir` when missing.

    Returns:
        The file.
    """
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path
