"""Curation: from raw interaction logs to a scrubbed, deduplicated, diverse, split chat dataset.

Every row read is accounted for: it is accepted, filtered with a reason code, or quarantined with a reason
(malformed rows). ``Curated.accounting`` holds the counts and they add up to the rows read.

Order of work, cheapest first so that only survivors are embedded:
quarantine malformed rows → quality filters (incl. bursts of top ratings from one user) → scrub PII/secrets
→ merge with the candidates of earlier runs (the curated pool) → exact duplicates (normalised text hash)
→ per-user cap → embed (cached) → quality-ordered greedy diversity selection (numpy; an approximate FAISS
index when pool and target both exceed ``ann_min_pool``) → stable hash split → leakage guard against every
published version (FAISS, :mod:`ftops.curation.leakage`).

Each row's target is its correction, else a teacher's answer, else its served answer when the row passes the
good-row rules (:mod:`ftops.curation.targets`); each example records its source.

Quality order, used wherever one of several candidates must win (exact duplicates, the user cap, and the
greedy diversity selection): the target's source by trust (correction, teacher, served), then rating (high
first), then confidence (high first), then latency (low first), then row id, so that of two near duplicates
the better-rated, more confident, faster answer is kept, and the order never depends on the order rows were
read in.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import CurationConfig
from ftops.curation.curated import Curated, to_example
from ftops.curation.rules import duplicate_ids, is_missing, quality_key, rating_bursts, split_of, text_hash, user_key
from ftops.curation.scrub import scrub
from ftops.curation.targets import assign_targets, candidate_of
from ftops.warehouse.schema import REQUIRED_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from numpy.typing import NDArray

    from ftops.curation.embedding import Embedder, EmbeddingCache


__all__ = ["Curated", "curate_frame", "examples_of", "quarantine_all", "summarise_accounting", "to_example"]
log = logging.getLogger(__name__)
_QUARANTINE_TEXT_CHARS = 4000  # quarantined text is kept (scrubbed) up to this length, for a person to look at


def _quarantine_copy(row: dict[str, Any]) -> dict[str, Any]:
    """The row as stored in quarantine: text cut to a readable length, then scrubbed."""
    safe: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, str):
            text = value[:_QUARANTINE_TEXT_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
            safe[key] = scrub(text.replace("\x00", "\\0")).text
        else:
            safe[key] = None if is_missing(value) else value
    return safe


def _row_id(row: dict[str, Any]) -> str:
    """The id a quarantined row is stored under: ``""`` when it has none (not ``"None"`` or ``"nan"``)."""
    return "" if is_missing(row.get("id")) else str(row["id"])


def quarantine_all(frame: pd.DataFrame, reason: str) -> Curated:
    """Every row of a batch quarantined with one reason (e.g. ``invalid_task_type``): nothing is curated.

    The stored copies are cut and scrubbed like any quarantined row, and the accounting adds up.
    """
    records: list[dict[str, Any]] = frame.to_dict("records")
    result = Curated(train=[], test=[], rows_read=len(records), reasons=[reason] * len(records))
    result.quarantined = [{"row_id": _row_id(r), "task_type": r.get("task_type"), "reason": reason,
                           "row": _quarantine_copy(r)} for r in records]  # fmt: skip
    if records:
        result.accounting[f"quarantined:{reason}"] = len(records)
    return result


def _select_with_user_cap(
    vectors: NDArray[np.float32], users: Sequence[str | None], cfg: CurationConfig, result: Curated
) -> tuple[list[int], set[int]]:
    """Greedy diversity selection in which no user fills more than ``max_user_share`` of the result.

    Selects; where a user has more than their share of the selection, that user's candidates from the first
    one over the share onwards (in quality order) are left out, and the selection is made again. The prefix
    before a removed candidate never changes, so each round keeps the capped users' best examples; rounds end
    when no user is over their share (each round removes candidates, so they do end).

    When both the pool and ``target_size`` exceed ``ann_min_pool`` (a kept set that large makes every block's
    matrix product slow; a small kept set is searched faster exactly, however large the pool), the
    near-duplicate search goes through an approximate index, and ``result`` records that and the recall
    measured against the exact rule.

    Returns:
        The selected positions (in order) and the positions left out by the cap.
    """
    from ftops.curation.selection import select_diverse, select_diverse_approx

    capped: set[int] = set()
    while True:
        keep = [i for i in range(len(users)) if i not in capped]
        if min(len(keep), cfg.target_size) > cfg.ann_min_pool:  # the kept set, which costs, is at most both
            picked, result.ann_recall = select_diverse_approx(vectors[keep], cfg.target_size, cfg.diversity_threshold,
                                                              nlist=cfg.ann_nlist, nprobe=cfg.ann_nprobe)  # fmt: skip
            result.selection_index = "ivf"
        else:
            picked = select_diverse(vectors[keep], cfg.target_size, cfg.diversity_threshold)
        chosen = [keep[j] for j in picked]
        limit = max(1, math.floor(cfg.max_user_share * len(chosen)))
        counts: Counter[str] = Counter()
        over: dict[str, int] = {}
        for i in chosen:
            user = users[i]
            if user is not None:
                counts[user] += 1
                if counts[user] == limit + 1:
                    over[user] = i
        if not over:
            return chosen, capped
        capped |= {j for user, first in over.items() for j in range(first, len(users)) if users[j] == user}


def _guard_leakage(
    vectors: NDArray[np.float32],
    splits: list[str],
    published: Sequence[tuple[str, str]],
    embedder: Embedder,
    cache: EmbeddingCache | None,
    cfg: CurationConfig,
    result: Curated,
) -> list[str | None]:
    """Run the leakage guard over the selected examples; their splits after it (None: dropped)."""
    import numpy as np

    from ftops.curation.embedding import embed_with_cache
    from ftops.curation.leakage import guard_splits

    prompts = {split: list(dict.fromkeys(p for p, s in published if s == split)) for split in ("train", "test")}
    history = {}
    for split, texts in prompts.items():
        if not texts:
            history[split] = np.zeros((0, vectors.shape[1]), dtype=np.float32)
        elif cache is not None:
            history[split], embedded = embed_with_cache(embedder, texts, cache)
            result.embedded_new += embedded
        else:
            history[split] = embedder.embed(texts)
            result.embedded_new += len(texts)
    approximate = len(prompts["train"]) + len(prompts["test"]) > cfg.ann_min_pool
    guarded, report = guard_splits(vectors, splits, history["train"], history["test"], cfg.leakage_threshold,
                                   approximate=approximate, nlist=cfg.ann_nlist, nprobe=cfg.ann_nprobe)  # fmt: skip
    result.leakage = report.as_dict()
    return guarded


def _exclude_evalset(
    vectors: NDArray[np.float32], unique: list[dict[str, Any]], selected: list[int], splits: list[str],
    evalset: Sequence[str], embedder: Embedder, cache: EmbeddingCache | None, cfg: CurationConfig, result: Curated,
    outcome: dict[int, str],
) -> tuple[list[int], list[str]]:
    """The selection without the training examples that ask an eval-set question (``filtered:evalset``)."""
    from ftops.curation.embedding import embed_with_cache
    from ftops.curation.leakage import near_evalset

    texts = list(dict.fromkeys(evalset))
    eval_vectors, embedded = (embed_with_cache(embedder, texts, cache) if cache is not None
                              else (embedder.embed(texts), len(texts)))  # fmt: skip
    result.embedded_new += embedded
    near = near_evalset(vectors[selected], eval_vectors, cfg.evalset_threshold)
    kept: list[tuple[int, str]] = []
    for i, split, hit in zip(selected, splits, near, strict=True):
        if hit and split == "train":
            result.evalset_excluded += 1
            if unique[i]["index"] is not None:
                outcome[unique[i]["index"]] = "filtered:evalset"
        else:
            kept.append((i, split))
    return [i for i, _ in kept], [s for _, s in kept]


def curate_frame(
    frame: pd.DataFrame,
    cfg: CurationConfig,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    *,
    earlier: Sequence[dict[str, Any]] = (),
    future_after: datetime | None = None,
    published: Sequence[tuple[str, str]] = (),
    evalset: Sequence[str] = (),
    trusted: frozenset[str] = frozenset(),
) -> Curated:
    """Curate one task type's raw rows, together with the candidates earlier runs kept.

    Args:
        frame: Raw log rows (the interaction log schema).
        cfg: Curation settings.
        embedder: Prompt embedder for diversity selection.
        cache: Embedding cache; without one every candidate is embedded.
        earlier: Candidates from earlier runs (the curated pool: scrubbed, with ``row_id`` and
            ``user_key``); rows of this batch replace earlier copies with the same id.
        future_after: Rows stamped at or after this instant are quarantined as ``timestamp_in_future``.
        published: (prompt, split) of every example of every published version of the task type, for the
            leakage guard (:mod:`ftops.curation.leakage`); a new example it drops is ``filtered:leakage``.
        evalset: The prompts of the task type's eval set: a training example within ``evalset_threshold`` of
            one is left out (``filtered:evalset``), a test example kept (the eval set is never trained on).
        trusted: ``model_version`` strings of trusted teachers, whose unrated answers are targets.

    Returns:
        The curated dataset with its accounting of this batch's rows.

    Raises:
        KeyError: A required column is missing (schema drift), naming the columns.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"interaction log is missing columns {missing}; found {sorted(frame.columns)}")
    clock = time.perf_counter()
    records: list[dict[str, Any]] = frame.to_dict("records")
    result = Curated(train=[], test=[], rows_read=len(records), reasons=[None] * len(records))
    outcome: dict[int, str] = duplicate_ids(records)  # row index -> accounting key, for rows not accepted
    # each row's target (correction, teacher answer or served answer: ftops.curation.targets), or its outcome
    targets = assign_targets(records, outcome, cfg, future_after, result.target_rejections, trusted)
    passed = [i for i in range(len(records)) if i not in outcome]
    burst_rows = rating_bursts(records, passed, cfg)
    result.burst_users = sorted({k for i in burst_rows if (k := user_key(records[i].get("user_id")))})
    outcome.update(dict.fromkeys(burst_rows, "filtered:rating_burst"))

    clock = result.lap("rules", clock)
    fresh: list[dict[str, Any]] = []
    for i in passed:
        if i in burst_rows:
            continue
        candidate, counts = candidate_of(records[i], i, targets[i])
        if candidate is None:
            outcome[i] = "quarantined:unremovable_secret"
            continue
        result.scrubbed.update(counts)
        fresh.append(candidate)
    for i, key in outcome.items():
        if key.startswith("quarantined:"):
            reason = key.split(":", 1)[1]
            result.reasons[i] = reason
            result.quarantined.append({"row_id": _row_id(records[i]), "task_type": records[i].get("task_type"),
                                       "reason": reason, "row": _quarantine_copy(records[i])})  # fmt: skip
    result.candidates = [{k: v for k, v in c.items() if k != "index"} for c in fresh]

    clock = result.lap("scrub", clock)
    batch_ids = {c["row_id"] for c in fresh}
    allowed = {"served", *cfg.target_sources}  # a source switched off is off for earlier runs' candidates too
    pool = [dict(c, index=None) for c in earlier
            if c["row_id"] not in batch_ids and c.get("source", "served") in allowed] + fresh  # fmt: skip
    pool.sort(key=quality_key)
    result.pool_size = len(pool)

    unique: list[dict[str, Any]] = []
    seen: set[str] = set()
    for cand in pool:
        key = text_hash(cand["prompt"] if not cand.get("context") else f"{cand['context']}\0{cand['prompt']}")
        if key in seen:
            if cand["index"] is not None:
                outcome[cand["index"]] = "filtered:duplicate"
            continue
        seen.add(key)
        unique.append(cand)

    clock = result.lap("dedup", clock)
    selected: list[int] = []
    splits: list[str] = []
    if unique:
        from ftops.curation.embedding import embed_with_cache
        from ftops.curation.selection import diversity_score

        prompts = [c["prompt"] for c in unique]
        if cache is not None:
            vectors, result.embedded_new = embed_with_cache(embedder, prompts, cache)
        else:
            vectors, result.embedded_new = embedder.embed(prompts), len(prompts)
        clock = result.lap("embed", clock)
        selected, capped = _select_with_user_cap(vectors, [c["user_key"] for c in unique], cfg, result)
        for i in capped:
            result.capped_users[unique[i]["user_key"]] += 1
            if unique[i]["index"] is not None:
                outcome[unique[i]["index"]] = "filtered:user_cap"
        chosen = set(selected)
        # A rejected candidate is either too similar to a kept one, or came after the target was reached.
        # Candidates after the last kept one were never examined when the target was reached.
        last = selected[-1] if len(selected) == cfg.target_size else len(unique)
        for i, cand in enumerate(unique):
            if i not in chosen and i not in capped and cand["index"] is not None:
                outcome[cand["index"]] = "filtered:near_duplicate" if i < last else "filtered:over_target"
        splits = [split_of(unique[i]["prompt"], cfg.test_split) for i in selected]
        if published:
            clock = result.lap("select_and_split", clock)
            guarded = _guard_leakage(vectors[selected], splits, published, embedder, cache, cfg, result)
            for i, split in zip(selected, guarded, strict=True):
                if split is None and unique[i]["index"] is not None:
                    outcome[unique[i]["index"]] = "filtered:leakage"
            survivors = [(i, s) for i, s in zip(selected, guarded, strict=True) if s is not None]
            selected, splits = [i for i, _ in survivors], [s for _, s in survivors]
            clock = result.lap("leakage_guard", clock)
        if evalset and selected:
            selected, splits = _exclude_evalset(vectors, unique, selected, splits, evalset, embedder, cache, cfg,
                                                result, outcome)  # fmt: skip
            clock = result.lap("evalset_guard", clock)
        result.diversity_score = diversity_score(vectors[selected]) if len(selected) > 1 else 0.0
        test_rows = [i for i, s in zip(selected, splits, strict=True) if s == "test"]
        train_rows = [i for i, s in zip(selected, splits, strict=True) if s == "train"]
        if test_rows and train_rows:
            result.max_cross_split_similarity = float((vectors[test_rows] @ vectors[train_rows].T).max())

    clock = result.lap("select_and_split", clock)
    users: Counter[str] = Counter()
    for i, split in zip(selected, splits, strict=True):
        cand = unique[i]
        result.add_example(cand, split)
        if cand["index"] is None:
            result.from_earlier_runs += 1
        if cand["user_key"] is not None:
            users[cand["user_key"]] += 1
    result.max_user_share = max(users.values()) / len(selected) if users else 0.0
    result.accounting.update(outcome.values())
    result.accounting["accepted"] += len(selected) - result.from_earlier_runs
    log.info(
        "Curated %d rows: %d accepted (%s); dataset %d examples (%d train, %d test, %d from earlier runs, targets "
        "%s, %d preference pairs); %s", result.rows_read, len(selected) - result.from_earlier_runs,
        ", ".join(f"{k}={v}" for k, v in sorted(result.accepted_sources.items())) or "none", len(selected),
        len(result.train), len(result.test), result.from_earlier_runs, result.source_counts(), len(result.preference),
        ", ".join(f"{k}={v}" for k, v in sorted(result.accounting.items()) if k != "accepted") or "nothing dropped",
    )  # fmt: skip
    if result.target_rejections:
        log.warning("Corrections or teacher answers that failed the answer rules (the row fell back to its served "
                    "answer or was filtered): %s", dict(sorted(result.target_rejections.items())))  # fmt: skip
    if result.capped_users:
        log.warning("User cap (%.0f %% of a dataset) left out %d candidates of %d users", 100 * cfg.max_user_share,
                    sum(result.capped_users.values()), len(result.capped_users))  # fmt: skip
    if result.burst_users:
        log.warning("Bursts of top ratings from %d users: %d rows left out (%s)", len(result.burst_users),
                    result.accounting["filtered:rating_burst"], ", ".join(result.burst_users))  # fmt: skip
    return result


def summarise_accounting(accounting: Counter[str] | dict[str, int]) -> dict[str, int]:
    """Plain sorted dict of the counts (for XCom, metadata and logs)."""
    return {k: int(v) for k, v in sorted(accounting.items())}


def examples_of(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, reference response) pairs of chat examples: the last user message and the final reply."""
    pairs = []
    for row in rows:
        msgs = row["messages"]
        prompt = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        answer = next(m["content"] for m in reversed(msgs) if m["role"] == "assistant")
        pairs.append((prompt, answer))
    return pairs
