"""Frozen eval sets: the yardstick a task type's models are compared on, version after version.

An eval set is a list of rows ``{"prompt", "reference", "source"}`` (and ``"messages"`` for a multi-turn
question, whose last user turn is ``prompt``) whose references no served model wrote: people labelled them
(``human``, ``imported``), corrected a served answer (``correction``) or a teacher model answered
(``teacher``). Its versions are git tags ``evalset/<task_type>/v<N>`` in the dataset registry, content
``<task_type>/evalset.jsonl``, tracked by DVC like the datasets. A version never changes; an eval set grows only by
a new version (an explicit import, corrections, teacher answers), which holds the rows of the one before it.
Curation never selects into one, and the leakage guard keeps every eval-set prompt and its paraphrases out of
training splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ftops.datasets.versions import DatasetRegistry, DatasetVersion, to_jsonl

KIND = "evalset"
FILE = "evalset"  # <task_type>/evalset.jsonl
SOURCES = ("human", "imported", "correction", "teacher")


def as_example(row: Mapping[str, Any]) -> dict[str, Any]:
    """An eval-set row as a chat example whose final assistant turn is the reference (what evaluation reads)."""
    messages = list(row.get("messages") or [{"role": "user", "content": row["prompt"]}])
    return {"messages": [*messages, {"role": "assistant", "content": row["reference"]}]}


class EvalSets:
    """The eval-set versions of a dataset registry.

    Args:
        registry: The dataset registry (the same git repository, DVC remote and git remote).
    """

    def __init__(self, registry: DatasetRegistry) -> None:
        self.registry = registry

    def versions(self, task_type: str) -> list[DatasetVersion]:
        """Every eval-set version of a task type, oldest first."""
        return self.registry.versions(task_type, kind=KIND)

    def latest(self, task_type: str) -> DatasetVersion | None:
        """The newest eval-set version, or None when the task type has none."""
        versions = self.versions(task_type)
        return versions[-1] if versions else None

    def get(self, task_type: str, version: int | str) -> DatasetVersion:
        """A version by number (``2``, ``"v2"``) or tag (``evalset/<task_type>/v2``).

        Raises:
            DatasetNotFoundError: No such version (a LookupError).
        """
        return self.registry.get(task_type, version, kind=KIND)

    def read(self, version: DatasetVersion) -> list[dict[str, Any]]:
        """The rows of one version."""
        if version.kind != KIND:
            raise ValueError(f"{version.tag} is not an eval set")
        return self.registry.read(version, FILE)

    def publish(self, task_type: str, rows: Sequence[Mapping[str, Any]]) -> DatasetVersion:
        """Version the rows as the task type's next eval set (the same rows as an existing version: that one).

        Raises:
            ValueError: No rows, a row without a prompt or reference, or a source outside :data:`SOURCES`.
            RuntimeError: DVC or git failed (see :meth:`DatasetRegistry.publish`).
        """
        if not rows:
            raise ValueError("an eval set needs at least one row")
        for i, row in enumerate(rows):
            if not row.get("prompt") or not row.get("reference") or row.get("source") not in SOURCES:
                raise ValueError(f"eval-set row {i} needs a prompt, a reference and a source in {SOURCES}")
        text = to_jsonl(rows)
        digest = hashlib.sha256(text.encode()).hexdigest()
        return self.registry.publish_files(
            task_type, {f"{FILE}.jsonl": text}, digest, f"rows={len(rows)}", kind=KIND,
            commit_message=f"Eval set {task_type}: {len(rows)} rows",
        )  # fmt: skip
