"""What curating one task type's batch produced (:class:`Curated`), example by example with its lineage.

Each example records, in lists aligned with the splits' rows: the log row behind it (``lineage``), the model
version whose answer is its reference (``served_by``; None where a correction or a teacher wrote it), and where
its target came from (``sources``: ``served``, ``correction`` or ``teacher``, see
:mod:`ftops.curation.targets`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# The key under which a staged curation result's metadata carries its preference pairs until they are published
# (as the version's preference.jsonl, never in its metadata.json): ftops.pipeline.curate.
STAGED_PAIRS = "staged_preference"


def source_counts(sources: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Examples per split and target source, from row-by-row ``sources`` (``{"train": [...], "test": [...]}``)."""
    return {split: dict(sorted(Counter(found).items())) for split, found in sources.items()}


def prompt_turns(prompt: str, context: str | None = None) -> list[dict[str, str]]:
    """The turns a model answers: a candidate's ``context`` (JSON: system prompt, earlier turns) and its prompt."""
    return [*(json.loads(context) if context else []), {"role": "user", "content": prompt}]


def to_example(prompt: str, response: str, context: str | None = None) -> dict[str, Any]:
    """A chat-format training example (the OpenAI fine-tuning JSONL shape): the conversation before the prompt
    (``context``, JSON, when the call had one), the prompt and the target."""
    return {"messages": [*prompt_turns(prompt, context), {"role": "assistant", "content": response}]}


@dataclass
class Curated:
    """The result of curating one task type's batch."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    rows_read: int
    accounting: Counter[str] = field(default_factory=Counter)  # "accepted", "filtered:<rule>", "quarantined:<why>"
    reasons: list[str | None] = field(default_factory=list)  # quarantine reason per row read, in order
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # this batch's survivors, for the pool
    # row-level lineage: the log row id behind each example, in the splits' order
    lineage: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "test": []})
    # the model version that served each example's response (its reference), in the same order; None: unknown
    served_by: dict[str, list[str | None]] = field(default_factory=lambda: {"train": [], "test": []})
    # where each example's target came from (served | correction | teacher), in the same order
    sources: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "test": []})
    # a better answer beside a served one, for the train split's examples only (a test prompt never trains)
    preference: list[dict[str, Any]] = field(default_factory=list)
    accepted_sources: Counter[str] = field(default_factory=Counter)  # "source:<source>" of this batch's accepted
    # targets that a row carried but that failed the answer rules ("<source>_<rule>"); the row used the next one
    target_rejections: Counter[str] = field(default_factory=Counter)
    scrubbed: Counter[str] = field(default_factory=Counter)
    capped_users: Counter[str] = field(default_factory=Counter)  # user key -> candidates dropped by the cap
    burst_users: list[str] = field(default_factory=list)  # user keys with a burst of top ratings
    embedded_new: int = 0
    pool_size: int = 0  # candidates considered: earlier runs' and this batch's
    from_earlier_runs: int = 0  # selected examples that came from earlier runs' candidates
    diversity_score: float = 0.0
    max_cross_split_similarity: float = 0.0  # highest cosine between a test and a train prompt
    max_user_share: float = 0.0
    selection_index: str = "exact"  # "exact" (numpy blocks) or "ivf" (pool and target above ann_min_pool)
    ann_recall: float | None = None  # the approximate path's near-duplicate recall against exact, measured
    leakage: dict[str, Any] = field(default_factory=dict)  # the leakage guard's report (LeakageReport.as_dict)
    evalset_excluded: int = 0  # training examples left out because they ask an eval-set question
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def lap(self, phase: str, since: float) -> float:
        """Add the time since ``since`` to ``phase``; returns now."""
        now = time.perf_counter()
        self.timings[phase] = round(self.timings.get(phase, 0.0) + now - since, 3)
        return now

    def add_example(self, cand: dict[str, Any], split: str) -> None:
        """Add a selected candidate to ``split`` with its lineage, author, source and preference pair.

        A target that a correction or a teacher wrote names no serving model in ``served_by`` (the gate's split
        without the incumbent keeps it: no served model wrote that reference).
        """
        source = cand.get("source") or "served"
        (self.test if split == "test" else self.train).append(to_example(cand["prompt"], cand["response"],
                                                                          cand.get("context")))  # fmt: skip
        self.lineage[split].append(cand["row_id"])
        self.served_by[split].append(cand.get("model_version") if source == "served" else None)
        self.sources[split].append(source)
        if split == "train" and source != "served" and cand.get("rejected"):
            self.preference.append({"messages": prompt_turns(cand["prompt"], cand.get("context")),
                                    "chosen": cand["response"], "rejected": cand["rejected"], "source": source,
                                    "row_id": cand["row_id"]})  # fmt: skip
        if cand.get("index") is not None:
            self.accepted_sources[f"source:{source}"] += 1

    def source_counts(self) -> dict[str, dict[str, int]]:
        """Examples per split and source, e.g. ``{"train": {"correction": 3, "served": 80}, "test": {...}}``."""
        return source_counts(self.sources)

    def balanced(self) -> bool:
        """True when accepted + filtered + quarantined equals the rows read."""
        return sum(self.accounting.values()) == self.rows_read
