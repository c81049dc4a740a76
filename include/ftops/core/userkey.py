"""Pseudonymous user keys: an HMAC-SHA256 of the user id under a per-installation secret.

The key names a user in the curated pool, the erasure marks, the decisions and the logs; the user id itself
never leaves the warehouse. A plain hash of a guessable id (an e-mail address, a number) is reversible by
hashing guesses, so the key is keyed: ``user-`` and the first 128 bits (32 hex characters) of
``HMAC-SHA256(secret, user id)``.

The secret, in order of precedence:

1. ``FTOPS_USER_KEY_SECRET``: the secret itself (any string; for workers that get secrets by environment);
2. ``FTOPS_USER_KEY_SECRET_FILE``: a file holding it;
3. ``FTOPS_HOME/user_key.secret``: created on first use (32 random bytes as hex, mode 0600).

Every machine of one installation (Airflow workers, the gateway host, the machine that runs ``ftops erase``)
must use the same secret, or the same user gets different keys: copy the file (keeping it 0600) or set the
variable from one secret store. Losing the secret does not lose data, but keys made after it changed do not
match the earlier ones (erasure still finds the user's log rows by id; the pool's earlier rows then need the
old secret).

Keys made before keys were salted (``user-`` and 12 hex characters of an unsalted SHA-256) are still
recognised where marks are read: :func:`user_keys` gives both forms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

SECRET_ENV = "FTOPS_USER_KEY_SECRET"
SECRET_FILE_ENV = "FTOPS_USER_KEY_SECRET_FILE"
SECRET_FILE_NAME = "user_key.secret"
DIGEST_HEX = 32  # 128 bits: no collision among any realistic number of users
_cache: dict[tuple[str, str], bytes] = {}


def secret_path() -> Path:
    """Where the secret file is (``FTOPS_USER_KEY_SECRET_FILE`` or ``FTOPS_HOME/user_key.secret``)."""
    from ftops.core.config import ftops_home

    return Path(os.environ.get(SECRET_FILE_ENV) or ftops_home() / SECRET_FILE_NAME)


def user_key_secret() -> bytes:
    """The installation's secret (see the module docstring), created on first use.

    Raises:
        ValueError: The secret file exists but is empty.
    """
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = secret_path()
    cached = _cache.get(("file", str(path)))
    if cached is not None:
        return cached
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes creating it at once agree on the one that won
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
    value = path.read_text().strip().encode()
    if not value:
        raise ValueError(f"the user-key secret file {path} is empty: restore it from another machine of this "
                         f"installation, or delete it to start a new secret (earlier keys then stop matching)")  # fmt: skip
    _cache[("file", str(path))] = value
    return value


def _text(user_id: Any) -> bytes:
    return str(user_id).encode("utf-8", "backslashreplace")


def hmac_user_key(user_id: Any) -> str:
    """``user-`` and 32 hex characters of HMAC-SHA256(secret, user id)."""
    return "user-" + hmac.new(user_key_secret(), _text(user_id), hashlib.sha256).hexdigest()[:DIGEST_HEX]


def legacy_user_key(user_id: Any) -> str:
    """The unsalted key of earlier releases (``user-`` and 12 hex characters of SHA-256): read, never written."""
    return "user-" + hashlib.sha256(_text(user_id)).hexdigest()[:12]


def user_keys(user_id: Any) -> tuple[str, str]:
    """Every key a user's marks and pool rows may carry: the current one first, then the legacy one."""
    return hmac_user_key(user_id), legacy_user_key(user_id)


def routing_salt() -> bytes:
    """The gateway's key for routing hashes (:func:`ftops.serving.router.bucket`), derived from the installation's
    secret: stable across restarts and across gateways of one installation, unknown to clients."""
    return hmac.new(user_key_secret(), b"ftops.serving.router.bucket", hashlib.sha256).digest()


def read_user_id(path: str | None) -> str:
    """A user id from a file that holds it alone (``-``: standard input), as ``ftops erase --user-id-file`` reads it.

    One trailing line break is dropped, nothing else (ids are compared exactly).

    Raises:
        ValueError: No file given, an empty id, or more than one line.
    """
    import sys

    if path is None:
        raise ValueError("give the user id with --user-id-file FILE (or - for standard input)")
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip() or "\n" in text:
        raise ValueError("the user id file must hold exactly one non-empty line")
    return text
