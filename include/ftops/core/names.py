"""Names that come from outside (task types, run keys, versions) and what may be built from them.

A task type becomes a folder name, a git tag, an MLflow experiment and model name and a filter string, so it
is checked wherever it enters (trigger forms, log rows, the CLI) against one pattern. Paths built from any
outside name go through :func:`contained_path`, which refuses a path that resolves outside its root, and
MLflow filter strings are built only from :func:`filter_literal` values.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

TASK_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""Letters, digits, ``_`` and ``-``, starting with a letter or digit, at most 64 characters: safe as a folder
name, inside a git tag, in an MLflow model name and in a filter string."""
_TASK_TYPE_RE = re.compile(TASK_TYPE_PATTERN)
_FILTER_SAFE_RE = re.compile(r"^[A-Za-z0-9_.:+@/ -]*$")


class InvalidNameError(ValueError):
    """A task type, run key or version that cannot be used as a name (it could leave a folder or break a query)."""


def is_task_type(name: object) -> bool:
    """Whether ``name`` is a valid task type (see :data:`TASK_TYPE_PATTERN`)."""
    return isinstance(name, str) and _TASK_TYPE_RE.fullmatch(name) is not None


def check_task_type(name: object) -> str:
    """Return ``name`` if it is a valid task type.

    Raises:
        InvalidNameError: It is not (the message quotes it and the pattern).
    """
    if not is_task_type(name):
        raise InvalidNameError(
            f"invalid task type {name!r}: use letters, digits, '_' and '-' (pattern {TASK_TYPE_PATTERN})"
        )
    return str(name)


def contained_path(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, resolved, and refused if it is not inside ``root``.

    Raises:
        InvalidNameError: A part is absolute, or ``..`` or a link takes the path out of ``root``.
    """
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and not path.is_relative_to(base):
        raise InvalidNameError(f"path {'/'.join(parts)!r} leaves its root {base}")
    return path


def filter_literal(value: str) -> str:
    """``value`` as a single-quoted MLflow filter-string literal, refused if it holds a quote or odd character.

    MLflow's filter grammar has no escape for a quote inside a literal, so a value that is not plainly safe
    is an error rather than something to escape.

    Raises:
        InvalidNameError: ``value`` holds a character outside letters, digits and ``_.:+@/ -``.
    """
    if not _FILTER_SAFE_RE.fullmatch(value):
        raise InvalidNameError(f"{value!r} cannot be used in an MLflow filter")
    return f"'{value}'"


def key_digest(key: str) -> str:
    """A short hex digest of an arbitrary key (a run id), safe in any filter string, path or tag."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
