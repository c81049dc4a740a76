"""Dataset versions: chat-format JSONL in a git repository tracked by DVC, pushed to a DVC remote.

Each version of a task type's dataset is a git tag ``dataset/<task_type>/v<N>`` whose annotation carries the
content hash of its train and test files. Publishing the same content again returns the existing version, so
a retry after a crash between any two steps (write, ``dvc add``, push, commit, tag) ends with exactly one
version. Writers must be serialised (DVC holds a repository lock): the DAGs use a one-slot pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftops.core.names import check_task_type, contained_path

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "ftops",
    "GIT_AUTHOR_EMAIL": "ftops@localhost",
    "GIT_COMMITTER_NAME": "ftops",
    "GIT_COMMITTER_EMAIL": "ftops@localhost",
}


class DatasetNotFoundError(LookupError):
    """A dataset version that does not exist was asked for."""


@dataclass(frozen=True)
class DatasetVersion:
    """One published dataset version."""

    task_type: str
    version: int
    content_hash: str
    created: bool = False  # True only for the call that created the tag

    @property
    def tag(self) -> str:
        return f"dataset/{self.task_type}/v{self.version}"


def to_jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    """Serialise rows as JSON lines with sorted keys (stable bytes for stable hashes)."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)


def content_hash(train: str, test: str) -> str:
    """sha256 over the train and test JSONL text."""
    h = hashlib.sha256()
    for part in (train, test):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class DatasetRegistry:
    """A git + DVC repository of dataset versions.

    Args:
        root: The repository folder (created and initialised on first use).
        remote: The DVC remote URL or folder (``/path``, ``s3://...``, ...).
    """

    def __init__(self, root: str | Path, remote: str) -> None:
        self.root = Path(root).resolve()
        self.remote = remote

    # -- plumbing ---------------------------------------------------------------------------------------
    def _git(self, *args: str, check: bool = True) -> str:
        env = {**os.environ, **_GIT_IDENTITY}
        proc = subprocess.run(
            ["git", *args], cwd=self.root, env=env, capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _dvc(self):  # noqa: ANN202 - dvc.repo.Repo, imported lazily
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        from dvc.repo import Repo

        return Repo(str(self.root))

    def ensure(self) -> None:
        """Initialise git, DVC and the default remote if missing (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ".git").exists():
            self._git("init", "-q", "-b", "main")
        if not (self.root / ".dvc").exists():
            os.environ.setdefault("DVC_NO_ANALYTICS", "1")
            from dvc.repo import Repo

            Repo.init(str(self.root)).close()
            self._git("add", ".dvc")
            self._git("commit", "-q", "-m", "Initialise the FT-Ops dataset registry")
        with self._dvc() as repo:
            with repo.config.edit() as conf:
                if conf.get("remote", {}).get("ftops", {}).get("url") != self.remote:
                    conf.setdefault("remote", {})["ftops"] = {"url": self.remote}
                    conf.setdefault("core", {})["remote"] = "ftops"
                    conf["core"]["analytics"] = False
        if self._git("status", "--porcelain", ".dvc/config"):
            self._git("add", ".dvc/config")
            self._git("commit", "-q", "-m", "Set the DVC remote")

    # -- queries ----------------------------------------------------------------------------------------
    def versions(self, task_type: str) -> list[DatasetVersion]:
        """All versions of a task type, oldest first.

        Raises:
            InvalidNameError: The task type is not a valid name.
        """
        check_task_type(task_type)
        if not (self.root / ".git").exists():
            return []
        out = self._git(
            "for-each-ref", f"refs/tags/dataset/{task_type}/", "--format=%(refname:short)%09%(contents:subject)"
        )
        found = []
        for line in out.splitlines():
            tag, _, subject = line.partition("\t")
            m = re.fullmatch(rf"dataset/{re.escape(task_type)}/v(\d+)", tag)
            h = re.search(r"content_hash=([0-9a-f]{64})", subject)
            if m and h:
                found.append(DatasetVersion(task_type, int(m.group(1)), h.group(1)))
        return sorted(found, key=lambda v: v.version)

    def task_types(self) -> list[str]:
        """Task types with at least one version."""
        if not (self.root / ".git").exists():
            return []
        tags = self._git("tag", "--list", "dataset/*").split()
        return sorted({t.split("/")[1] for t in tags if t.count("/") == 2})

    def latest(self, task_type: str) -> DatasetVersion | None:
        """The newest version, or None when the task type has none."""
        versions = self.versions(task_type)
        return versions[-1] if versions else None

    def get(self, task_type: str, version: int | str | None = None) -> DatasetVersion:
        """A version by number (``3``, ``"v3"``, a full tag) or the latest when None.

        Raises:
            DatasetNotFoundError: No such version.
        """
        versions = self.versions(task_type)
        if version is None or version == "latest":
            if not versions:
                raise DatasetNotFoundError(f"task type {task_type!r} has no dataset version yet; run ftops_curate")
            return versions[-1]
        number = int(str(version).rsplit("/", 1)[-1].lstrip("v"))
        for v in versions:
            if v.version == number:
                return v
        known = ", ".join(v.tag for v in versions) or "none"
        raise DatasetNotFoundError(f"dataset version {version!r} of {task_type!r} does not exist (known: {known})")

    def read(self, version: DatasetVersion, split: str) -> list[dict[str, Any]]:
        """Rows of one split, read through DVC at the version's tag (from the remote if not cached)."""
        import dvc.api

        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        text = dvc.api.read(f"{version.task_type}/{split}.jsonl", repo=str(self.root), rev=version.tag)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def read_metadata(self, version: DatasetVersion) -> dict[str, Any]:
        """The version's metadata.json."""
        import dvc.api

        return json.loads(dvc.api.read(f"{version.task_type}/metadata.json", repo=str(self.root), rev=version.tag))

    # -- publishing -------------------------------------------------------------------------------------
    def publish(
        self,
        task_type: str,
        train: Sequence[Mapping[str, Any]],
        test: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any],
        *,
        reuse_older: bool = True,
    ) -> DatasetVersion:
        """Version a dataset: write, ``dvc add``, push (verified), commit, tag.

        Same train/test content as an existing version returns that version (``created=False``). With
        ``reuse_older=False`` only the latest version counts: content equal to an older version's becomes a
        new version, so that it is the latest (an erasure's successor that restores an earlier version's
        content must be what the governor and fine-tunes read next).

        Raises:
            RuntimeError: The push could not be verified against the remote, or git failed.
        """
        check_task_type(task_type)
        train_text, test_text = to_jsonl(train), to_jsonl(test)
        digest = content_hash(train_text, test_text)
        self.ensure()
        versions = self.versions(task_type)
        for existing in versions if reuse_older else versions[-1:]:
            if existing.content_hash == digest:
                log.info("Content %s is already %s: nothing to version", digest[:12], existing.tag)
                return existing

        folder = contained_path(self.root, check_task_type(task_type))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_text(train_text)
        (folder / "test.jsonl").write_text(test_text)
        meta = {**metadata, "content_hash": digest, "train_rows": len(train), "test_rows": len(test)}
        (folder / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))

        with self._dvc() as repo:
            repo.add(str(folder))
            try:
                pushed = repo.push(targets=[str(folder)], remote="ftops")
            except Exception as exc:  # DVC raises many kinds; the message is what a person needs
                raise RuntimeError(f"DVC push of {task_type} to the remote {self.remote} failed: {exc}") from exc
            missing = {k: v for k, v in repo.status(targets=[str(folder)], cloud=True, remote="ftops").items() if v}
        if missing:
            raise RuntimeError(f"DVC push to {self.remote} left files missing on the remote: {missing}")
        log.info("Pushed %s files of %s to the DVC remote %s", pushed, task_type, self.remote)

        self._git("add", f"{task_type}.dvc", ".gitignore")
        if self._git("diff", "--cached", "--name-only"):
            self._git("commit", "-q", "-m", f"Dataset {task_type}: {len(train)} train, {len(test)} test")
        number = max((v.version for v in self.versions(task_type)), default=0) + 1
        created = DatasetVersion(task_type, number, digest, created=True)
        self._git("tag", "-a", created.tag, "-m", f"content_hash={digest} train={len(train)} test={len(test)}")
        log.info("Created dataset version %s (content %s)", created.tag, digest[:12])
        return created
