"""Dataset versions: chat-format JSONL in a git repository tracked by DVC, pushed to a DVC remote.

Each version of a task type's dataset is a git tag ``dataset/<task_type>/v<N>`` whose annotation carries the
content hash of its train and test files. Publishing the same content again returns the existing version, so
a retry after a crash between any two steps (write, ``dvc add``, push, commit, tag) ends with exactly one
version. Frozen eval sets are versioned the same way under ``evalset/<task_type>/v<N>``
(:mod:`ftops.datasets.evalsets`). Writers must be serialised (DVC holds a repository lock): the DAGs use a one-slot pool.

With a git remote (``storage.dataset_remote``) the remote is the registry and a worker's repository a copy of
it: a worker that has none clones it, lists fetch the remote's tags first, and a version exists once its
commit and tag reach the remote in one atomic push; the local tag is made only after that push, so a worker
never sees a version that was not published. A version number that another writer took first (two writers
that no pool serialises) makes the push fail: the publish fetches and tries again with the next number.
Fetches mirror the remote's dataset tags (a tag deleted there goes on every worker at its next fetch). A
registry that had no remote pushes its versions to it on first use; where the remote holds a tag of the same
name with other content, the remote's wins (with a warning) and the local content is versioned anew.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftops.core.names import check_task_type, contained_path
from ftops.datasets.records import (  # noqa: F401 - re-exported: where callers import them from
    KINDS,
    PREFERENCE_FILE,
    SPLITS,
    DatasetNotFoundError,
    DatasetVersion,
    content_hash,
    to_jsonl,
)

log = logging.getLogger(__name__)
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "ftops",
    "GIT_AUTHOR_EMAIL": "ftops@localhost",
    "GIT_COMMITTER_NAME": "ftops",
    "GIT_COMMITTER_EMAIL": "ftops@localhost",
}
_TAG_SPECS = [f"refs/tags/{kind}/*:refs/tags/{kind}/*" for kind in KINDS]
_HEADS = "+refs/heads/*:refs/remotes/origin/*"
_PUSH_ATTEMPTS = 3


def is_local_path(url: str) -> bool:
    """True for a folder (``/srv/datasets.git``), False for a URL (``ssh://``, ``https://``, ``git@host:repo``)."""
    return "://" not in url and not re.match(r"[^/]+:", url)


def _git_at(cwd: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class DatasetRegistry:
    """A git + DVC repository of dataset versions, optionally a copy of a shared git remote.

    Args:
        root: The repository folder (created and initialised, or cloned from ``git_remote``, on first use).
        remote: The DVC remote URL or folder (``/path``, ``s3://...``, ...).
        git_remote: The git remote that versions are published to and read from (a URL or the folder of a
            bare repository, created on first use); None keeps the versions in ``root`` only.
    """

    def __init__(self, root: str | Path, remote: str, git_remote: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.remote = remote
        self.git_remote = str(Path(git_remote).resolve()) if git_remote and is_local_path(git_remote) else git_remote

    @property
    def url(self) -> str:
        """Where versions are published, for lineage: the git remote (a folder as a ``file://`` URI), or the
        local repository when there is no remote."""
        if self.git_remote is None or is_local_path(self.git_remote):
            return Path(self.git_remote or self.root).as_uri()
        return self.git_remote

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

    def _has_repo(self) -> bool:
        return (self.root / ".git").exists()

    def _fetch(self, source: str = "origin", *, prune: bool = True) -> None:
        """The remote's branches and dataset tags, mirrored: a tag deleted on the remote goes here too, and a
        local tag that differs from the remote's of the same name yields to it (with a warning)."""
        flags = ["--no-tags", "--prune"] if prune else ["--no-tags"]
        try:
            self._git("fetch", *flags, source, _HEADS, *_TAG_SPECS)
        except RuntimeError as exc:
            if "would clobber existing tag" not in str(exc):
                raise
            log.warning("A dataset tag of %s differs from the one the remote %s holds under its name; the "
                        "remote's is the published one: %s", self.root, self.git_remote, exc)  # fmt: skip
            self._git("fetch", "-q", *flags, source, _HEADS, *(f"+{spec}" for spec in _TAG_SPECS))

    def _attach(self, url: str) -> None:
        """Publish the versions of a repository that had no git remote (or another one) to ``url``, then make
        it ``origin``; a crash before the last step repeats it all (each step is idempotent)."""
        self._fetch(url, prune=False)  # into refs/remotes/origin: what the remote has
        if self._git("rev-parse", "-q", "--verify", "HEAD", check=False) and not self._git(
            "ls-remote", url, "refs/heads/main"
        ):
            self._git("push", "-q", url, "HEAD:refs/heads/main")
        self._git("push", "-q", url, *_TAG_SPECS)
        self._git("remote", "remove", "origin", check=False)
        self._git("remote", "add", "origin", url)

    def _sync(self, *, create: bool = False) -> bool:
        """Clone the git remote when there is no repository, else fetch from it (once).

        Returns:
            Whether there is a local repository to read.
        """
        if self.git_remote is None:
            return self._has_repo()
        local_remote = is_local_path(self.git_remote)
        if local_remote and not (Path(self.git_remote) / "HEAD").exists():
            if not create:  # nothing was ever published there
                return self._has_repo()
            Path(self.git_remote).mkdir(parents=True, exist_ok=True)
            _git_at(Path(self.git_remote), "init", "-q", "--bare", "-b", "main")
        if not self._has_repo():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            _git_at(self.root.parent, "clone", "-q", "--no-tags", self.git_remote, str(self.root))
            self._git("symbolic-ref", "HEAD", "refs/heads/main")  # an empty remote: main is unborn
        elif self._git("remote", "get-url", "origin", check=False).strip() != self.git_remote:
            self._attach(self.git_remote)
        self._fetch()
        return True

    def _has_tag(self, tag: str) -> bool:
        return bool(self._git("rev-parse", "-q", "--verify", f"refs/tags/{tag}", check=False))

    def ensure(self) -> None:
        """Initialise (or clone) git, DVC and the default remote if missing (idempotent).

        With a git remote: the local main branch is reset to the remote's (a local commit that the remote
        lacks is one a crashed publish left, untagged). A repository that had no git remote publishes its
        versions to it first (this also happens on the first read, so that worker needs write access once).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.git_remote is not None:
            self._sync(create=True)
            if self._git("rev-parse", "-q", "--verify", "refs/remotes/origin/main", check=False):
                self._git("reset", "-q", "--hard", "refs/remotes/origin/main")
        elif not self._has_repo():
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
    def versions(self, task_type: str, kind: str = "dataset") -> list[DatasetVersion]:
        """All versions of a task type (of ``kind``: datasets or eval sets), oldest first (with a git remote: the
        remote's, fetched first).

        Raises:
            InvalidNameError: The task type is not a valid name.
            RuntimeError: The git remote could not be read.
        """
        check_task_type(task_type)
        self._sync()
        return self._local_versions(task_type, kind)

    def _local_versions(self, task_type: str, kind: str = "dataset") -> list[DatasetVersion]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if not self._has_repo():
            return []
        out = self._git(
            "for-each-ref", f"refs/tags/{kind}/{task_type}/", "--format=%(refname:short)%09%(contents:subject)"
        )
        found = []
        for line in out.splitlines():
            tag, _, subject = line.partition("\t")
            m = re.fullmatch(rf"{kind}/{re.escape(task_type)}/v(\d+)", tag)
            h = re.search(r"content_hash=([0-9a-f]{64})", subject)
            if m and h:
                found.append(DatasetVersion(task_type, int(m.group(1)), h.group(1), kind=kind))
        return sorted(found, key=lambda v: v.version)

    def task_types(self) -> list[str]:
        """Task types with at least one version."""
        if not self._sync():
            return []
        tags = self._git("tag", "--list", "dataset/*").split()
        return sorted({t.split("/")[1] for t in tags if t.count("/") == 2})

    def latest(self, task_type: str) -> DatasetVersion | None:
        """The newest version, or None when the task type has none."""
        versions = self.versions(task_type)
        return versions[-1] if versions else None

    def get(self, task_type: str, version: int | str | None = None, kind: str = "dataset") -> DatasetVersion:
        """A version (of ``kind``) by number (``3``, ``"v3"``, a full tag) or the latest when None.

        Raises:
            DatasetNotFoundError: No such version.
        """
        if version is None or version == "latest":
            versions = self.versions(task_type, kind)
            if not versions:
                raise DatasetNotFoundError(f"task type {task_type!r} has no {kind} version yet; run ftops_curate")
            return versions[-1]
        number = int(str(version).rsplit("/", 1)[-1].lstrip("v"))
        versions = self._local_versions(check_task_type(task_type), kind)
        if not any(v.version == number for v in versions):  # another worker may have published it
            versions = self.versions(task_type, kind)
        for v in versions:
            if v.version == number:
                return v
        known = ", ".join(v.tag for v in versions) or "none"
        raise DatasetNotFoundError(f"{kind} version {version!r} of {task_type!r} does not exist (known: {known})")

    def read(self, version: DatasetVersion, split: str) -> list[dict[str, Any]]:
        """Rows of one split (``train``, ``test``; ``evalset`` for an eval set), read through DVC at the version's
        tag (from the remote if not cached)."""
        import dvc.api

        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        self._fetch_missing(version)
        text = dvc.api.read(f"{version.task_type}/{split}.jsonl", repo=str(self.root), rev=version.tag)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def read_preference(self, version: DatasetVersion) -> list[dict[str, Any]]:
        """The version's preference pairs (see :meth:`publish`); none for a version published without them."""
        if not self.read_metadata(version).get("preference_rows"):
            return []
        return self.read(version, PREFERENCE_FILE.removesuffix(".jsonl"))

    def read_metadata(self, version: DatasetVersion) -> dict[str, Any]:
        """The version's metadata.json."""
        import dvc.api

        self._fetch_missing(version)
        return json.loads(dvc.api.read(f"{version.task_type}/metadata.json", repo=str(self.root), rev=version.tag))

    def _fetch_missing(self, version: DatasetVersion) -> None:
        if self.git_remote is not None and not (self._has_repo() and self._has_tag(version.tag)):
            self._sync()

    # -- publishing -------------------------------------------------------------------------------------
    def publish(
        self,
        task_type: str,
        train: Sequence[Mapping[str, Any]],
        test: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any],
        *,
        reuse_older: bool = True,
        preference: Sequence[Mapping[str, Any]] = (),
    ) -> DatasetVersion:
        """Version a dataset: write, ``dvc add``, push (verified), commit, tag; with a git remote, push the
        commit and the tag (one atomic push).

        ``preference`` rows (``{"messages": [...up to the last user turn], "chosen": str, "rejected": str, ...}``:
        a better answer beside the served one) are the version's ``preference.jsonl``, read back by
        :meth:`read_preference`. The file is always written (empty without pairs), so a version never carries
        an earlier version's pairs in the task type's DVC-tracked folder.

        Same train/test content as an existing version returns that version (``created=False``). With
        ``reuse_older=False`` only the latest version counts: content equal to an older version's becomes a
        new version, so that it is the latest (an erasure's successor that restores an earlier version's
        content must be what the governor and fine-tunes read next).

        Raises:
            RuntimeError: The DVC push could not be verified against the DVC remote, git failed, or the git
                remote refused the version (after trying again when another writer had taken its number).
        """
        train_text, test_text, pairs_text = to_jsonl(train), to_jsonl(test), to_jsonl(preference)
        digest = content_hash(train_text, test_text, pairs_text)
        n_train, n_test, n_pairs = train_text.count("\n"), test_text.count("\n"), pairs_text.count("\n")
        meta = {**metadata, "content_hash": digest, "train_rows": n_train, "test_rows": n_test,
                **({"preference_rows": n_pairs} if n_pairs else {})}  # fmt: skip
        files = {"train.jsonl": train_text, "test.jsonl": test_text, PREFERENCE_FILE: pairs_text,
                 "metadata.json": json.dumps(meta, indent=2, sort_keys=True, default=str)}  # fmt: skip
        pairs = f" preference={n_pairs}" if n_pairs else ""
        return self.publish_files(task_type, files, digest, f"train={n_train} test={n_test}{pairs}",
                                  commit_message=f"Dataset {task_type}: {n_train} train, {n_test} test{pairs}",
                                  reuse_older=reuse_older)  # fmt: skip

    def publish_files(
        self, task_type: str, files: Mapping[str, str], digest: str, summary: str, *, commit_message: str,
        kind: str = "dataset", reuse_older: bool = True,
    ) -> DatasetVersion:
        """Version files of a task type under tags ``<kind>/<task_type>/v<N>`` (see :meth:`publish`).

        The files are written into the task type's folder, which DVC tracks as a whole; a version's content is
        what its tag's commit holds under ``<task_type>/``. ``digest`` names the content: the same digest as an
        existing version of the kind returns that version.
        """
        check_task_type(task_type)
        for attempt in range(1, _PUSH_ATTEMPTS + 1):
            self.ensure()
            versions = self._local_versions(task_type, kind)  # ensure() fetched the remote's
            for existing in versions if reuse_older else versions[-1:]:
                if existing.content_hash == digest:
                    log.info("Content %s is already %s: nothing to version", digest[:12], existing.tag)
                    return existing
            self._write_and_commit(task_type, files, commit_message)
            number = max((v.version for v in self._local_versions(task_type, kind)), default=0) + 1
            created = DatasetVersion(task_type, number, digest, created=True, kind=kind)
            message = f"content_hash={digest} {summary}"
            if self.git_remote is None:
                self._git("tag", "-a", created.tag, "-m", message)
            if self.git_remote is None or self._push(created, message, last_attempt=attempt == _PUSH_ATTEMPTS):
                log.info("Created %s version %s (content %s)", kind, created.tag, digest[:12])
                return created
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _write_and_commit(self, task_type: str, files: Mapping[str, str], commit_message: str) -> None:
        """Write, ``dvc add``, push (verified) and commit files of a task type's folder."""
        folder = contained_path(self.root, check_task_type(task_type))
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)

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
            self._git("commit", "-q", "-m", commit_message)

    def _push(self, version: DatasetVersion, message: str, *, last_attempt: bool) -> bool:
        """Push main and the version's tag in one atomic push, then tag locally.

        The tag object is made without a local ref, so a crash before the push leaves no trace of the version
        and one after it leaves a tag that the next fetch brings.

        Returns:
            True when published; False when another writer took the number or moved main first (the caller
            tries again on top of the remote's state).
        """
        commit = self._git("rev-parse", "HEAD").strip()
        tagger = f"ftops <ftops@localhost> {int(time.time())} +0000"  # the identity of _GIT_IDENTITY
        body = f"object {commit}\ntype commit\ntag {version.tag}\ntagger {tagger}\n\n{message}\n"
        tag_object = _git_at(self.root, "mktag", stdin=body).strip()
        try:
            self._git("push", "-q", "--atomic", "origin", "HEAD:refs/heads/main",
                      f"{tag_object}:refs/tags/{version.tag}")  # fmt: skip
        except RuntimeError as exc:
            error = RuntimeError(f"publishing {version.tag} to the git remote {self.git_remote} failed: {exc}")
            if last_attempt:
                raise error from exc
            try:
                self._fetch()
            except RuntimeError:
                raise error from exc
            remote_main = self._git("rev-parse", "-q", "--verify", "refs/remotes/origin/main", check=False)
            moved = remote_main != self._git("merge-base", "refs/remotes/origin/main", "HEAD", check=False)
            if not (self._has_tag(version.tag) or moved):
                raise error from exc
            log.warning("%s: another writer published first; trying again on top of the remote", version.tag)
            return False
        self._git("update-ref", f"refs/tags/{version.tag}", tag_object)
        return True
