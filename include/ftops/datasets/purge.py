"""Purging dataset versions: the tags go from the registry and its git remote, and the content that only they
referenced goes from the DVC cache and the DVC remote (``ftops erase --purge``).

A version is purged only once a later version of its task type exists (the erasure's successor), so the
latest version of every task type, and every tag not purged, keeps its content: garbage collection keeps
what any remaining tag or the working tree references, and removes the rest. The git commits of a purged
version stay in the branch history, but they hold only DVC's pointer files (content hashes), never rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ftops.datasets.versions import DatasetRegistry

log = logging.getLogger(__name__)


def purge_versions(registry: DatasetRegistry, tags: Iterable[str]) -> list[str]:
    """Delete dataset tags (locally and on the git remote) and garbage-collect their content.

    Args:
        registry: The dataset registry.
        tags: Tags to purge (``dataset/<task_type>/v<N>``); the latest version of a task type is never purged,
            nor a tag that no longer exists (a re-run purges nothing twice).

    Returns:
        The tags purged now.

    Raises:
        RuntimeError: git or DVC failed (the purge is safe to run again).
    """
    wanted = sorted(set(tags))
    purged = []
    for tag in wanted:
        task_type = tag.split("/")[1]
        versions = registry.versions(task_type)  # with a git remote: its tags, fetched first
        if not any(v.tag == tag for v in versions):
            continue
        if versions[-1].tag == tag:
            log.warning("%s is the latest version of %s: it is not purged (no successor)", tag, task_type)
            continue
        if registry.git_remote is not None:
            registry._git("push", "-q", "origin", f":refs/tags/{tag}")
        registry._git("tag", "-d", tag)
        purged.append(tag)
    if purged:
        collect_garbage(registry)
        log.info("Purged %s and their content from %s and the DVC remote %s", ", ".join(purged), registry.url,
                 registry.remote)  # fmt: skip
    return purged


def collect_garbage(registry: DatasetRegistry) -> None:
    """Remove from the DVC cache and the DVC remote every object no remaining tag or the working tree uses."""
    registry.ensure()
    with registry._dvc() as repo:
        try:
            repo.gc(all_tags=True, workspace=True, cloud=True, remote="ftops", force=True)
        except Exception as exc:  # DVC raises many kinds; the message is what a person needs
            raise RuntimeError(f"DVC garbage collection in {registry.root} failed: {exc}") from exc
