"""What a dataset version is, apart from where it is stored: its tag, its files' names and its content hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "test")
PREFERENCE_FILE = "preference.jsonl"  # chosen/rejected pairs beside the splits (DPO)
KINDS = ("dataset", "evalset")  # tag prefixes: dataset versions and frozen eval sets (ftops.datasets.evalsets)


class DatasetNotFoundError(LookupError):
    """A dataset version that does not exist was asked for."""


@dataclass(frozen=True)
class DatasetVersion:
    """One published dataset version."""

    task_type: str
    version: int
    content_hash: str
    created: bool = False  # True only for the call that created the tag
    kind: str = "dataset"  # or "evalset": one of KINDS

    @property
    def tag(self) -> str:
        return f"{self.kind}/{self.task_type}/v{self.version}"


def to_jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    """Serialise rows as JSON lines with sorted keys (stable bytes for stable hashes)."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)


def content_hash(train: str, test: str, preference: str = "") -> str:
    """sha256 over the train and test JSONL text (and the preference pairs', when there are any: a version
    without pairs keeps the hash it had before pairs existed)."""
    h = hashlib.sha256()
    for part in (train, test, *((preference,) if preference else ())):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()
