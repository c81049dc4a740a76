"""The leakage guard across versions (real MiniLM embeddings, FAISS) and the approximate near-duplicate index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fakes import HashEmbedder, row

from ftops.core.config import CurationConfig, load_config
from ftops.curation import vector_index
from ftops.curation.curate import curate_frame, examples_of
from ftops.curation.embedding import EmbeddingCache
from ftops.curation.rules import split_of

CFG = CurationConfig(min_examples=1, target_size=100, test_split=0.2)
# all-MiniLM-L6-v2 cosines: the two France questions 0.97; France vs router or review prompts below 0.1
FRANCE_TEST = "What is the capital city of France?"  # hashes to test
FRANCE_TRAIN = "Which city is the capital of France?"  # hashes to train
FRANCE_OTHER = "What's the capital of France?"  # hashes to train; 0.96 and 0.95 to the two above
ROUTER = "How do I reset my router to factory settings?"  # train
REVIEW = "Classify the sentiment of this review: the blender broke after two days."  # test


@pytest.fixture(scope="module")
def embedder():
    from ftops.curation.embedding import SentenceEmbedder

    return SentenceEmbedder(load_config().curation.embedding_model)


@pytest.fixture
def faiss_searches(monkeypatch) -> list[int]:
    """Counts the guard's FAISS searches (queries per call)."""
    calls: list[int] = []
    real = vector_index.nearest

    def spy(index, queries):
        calls.append(len(queries))
        return real(index, queries)

    monkeypatch.setattr(vector_index, "nearest", spy)
    return calls


def curate(prompts: list[str], embedder, tmp_path, published: list[tuple[str, str]]):
    rows = [row(i, prompt=p) for i, p in enumerate(prompts)]
    return curate_frame(pd.DataFrame(rows), CFG, embedder, EmbeddingCache(tmp_path / "cache.sqlite"),
                        published=published)  # fmt: skip


def splits_of(result) -> dict[str, str]:
    found = {p: "train" for p, _ in examples_of(result.train)}
    return found | {p: "test" for p, _ in examples_of(result.test)}


def test_the_hash_splits_the_cases_rely_on() -> None:
    assert [split_of(p, CFG.test_split) for p in (FRANCE_TEST, FRANCE_TRAIN, FRANCE_OTHER, ROUTER, REVIEW)] == [
        "test", "train", "train", "train", "test"]  # fmt: skip


def test_a_paraphrase_of_an_earlier_training_example_arriving_as_test_moves_to_train(
    embedder, tmp_path, faiss_searches
) -> None:
    result = curate([FRANCE_TEST, REVIEW], embedder, tmp_path, published=[(FRANCE_TRAIN, "train"), (ROUTER, "train")])
    assert splits_of(result) == {FRANCE_TEST: "train", REVIEW: "test"}
    assert result.leakage | {"threshold": None} == {"threshold": None, "history_train": 2, "history_test": 0,
                                                    "moved_to_train": 1, "moved_to_test": 0, "dropped": 0,
                                                    "approximate": False}  # fmt: skip
    assert faiss_searches == [2, 2]  # both new examples searched in both splits' indexes
    assert result.lineage == {"train": ["r0"], "test": ["r1"]}
    assert result.balanced() and result.accounting == {"accepted": 2}


def test_a_paraphrase_of_an_earlier_test_example_arriving_as_training_moves_to_test(embedder, tmp_path) -> None:
    result = curate([FRANCE_TRAIN, ROUTER], embedder, tmp_path, published=[(FRANCE_TEST, "test")])
    assert splits_of(result) == {FRANCE_TRAIN: "test", ROUTER: "train"}
    assert (result.leakage["moved_to_test"], result.leakage["moved_to_train"], result.leakage["dropped"]) == (1, 0, 0)
    assert result.lineage == {"train": ["r1"], "test": ["r0"]}
    assert result.max_cross_split_similarity < 0.2


def test_a_paraphrase_of_both_splits_is_dropped_and_accounted_for(embedder, tmp_path) -> None:
    published = [(FRANCE_TRAIN, "train"), (FRANCE_TEST, "test")]
    result = curate([FRANCE_OTHER, ROUTER, REVIEW], embedder, tmp_path, published=published)
    assert splits_of(result) == {ROUTER: "train", REVIEW: "test"}
    assert result.leakage["dropped"] == 1
    assert result.accounting == {"accepted": 2, "filtered:leakage": 1} and result.balanced()
    assert result.lineage == {"train": ["r1"], "test": ["r2"]}


def test_unrelated_and_republished_examples_are_left_alone(embedder, tmp_path) -> None:
    """No false positive: other topics pass, and an example published before in its own split stays."""
    published = [(ROUTER, "train"), (REVIEW, "test"), ("How long should I boil an egg?", "train"),
                 ("Translate 'good morning' into Spanish.", "test")]  # fmt: skip
    prompts = [FRANCE_TEST, FRANCE_OTHER.replace("France", "Peru"), ROUTER, REVIEW, "What is 17 times 23?"]
    result = curate(prompts, embedder, tmp_path, published=published)
    assert splits_of(result) == {p: split_of(p, CFG.test_split) for p in prompts}
    assert (result.leakage["moved_to_train"], result.leakage["moved_to_test"], result.leakage["dropped"]) == (0, 0, 0)
    assert result.accounting == {"accepted": 5}


def test_no_history_no_guard() -> None:
    result = curate_frame(pd.DataFrame([row(i) for i in range(20)]), CFG, HashEmbedder())
    assert result.leakage == {} and result.accounting == {"accepted": 20}


# -- the approximate index ---------------------------------------------------------------------------------
def near_copies(rng: np.random.Generator, rows: np.ndarray, noise: float) -> np.ndarray:
    copies = rows + noise / np.sqrt(rows.shape[1]) * rng.standard_normal(rows.shape).astype(np.float32)
    return (copies / np.linalg.norm(copies, axis=1, keepdims=True)).astype(np.float32)


def test_approximate_index_recall_of_near_duplicates_at_the_shipped_parameters() -> None:
    cfg = load_config().curation
    rng = np.random.default_rng(0)
    base = near_copies(rng, rng.standard_normal((20_000, 384)).astype(np.float32), 0.0)
    queries = near_copies(rng, base[rng.choice(len(base), 1000, replace=False)], 0.3)  # cosine ~0.96
    approximate = vector_index.approximate_index(base, nlist=cfg.ann_nlist, nprobe=cfg.ann_nprobe)
    approximate.add(base)
    assert approximate.nlist == 500  # 20 000 rows train 500 buckets, 40 rows each
    recall = vector_index.recall_at_1(approximate, vector_index.exact_index(base), queries, cfg.diversity_threshold)
    assert recall is not None and recall >= 0.95


def test_approximate_selection_measures_its_recall_and_matches_exact_on_near_duplicates() -> None:
    from ftops.curation.selection import select_diverse, select_diverse_approx

    rng = np.random.default_rng(1)
    base = near_copies(rng, rng.standard_normal((3000, 384)).astype(np.float32), 0.0)
    rows = near_copies(rng, base[rng.integers(len(base), size=20_000)], 0.2)
    exact = select_diverse(rows, 10_000, 0.9)
    approx, recall = select_diverse_approx(rows, 10_000, 0.9, nlist=1024, nprobe=16)
    assert recall is not None and recall >= 0.95
    assert len(set(approx) & set(exact)) >= 0.95 * len(exact)


def test_curation_switches_to_the_approximate_index_when_pool_and_target_exceed_ann_min_pool() -> None:
    rows = [row(i) for i in range(60)]
    small = curate_frame(pd.DataFrame(rows), CFG, HashEmbedder())
    assert (small.selection_index, small.ann_recall) == ("exact", None)
    big = curate_frame(pd.DataFrame(rows), CFG.model_copy(update={"ann_min_pool": 50}), HashEmbedder())
    assert big.selection_index == "ivf"
    assert big.lineage == small.lineage and big.accounting == small.accounting
    # a pool above ann_min_pool but a target below it: the kept set stays small, exact search is faster
    capped = curate_frame(pd.DataFrame(rows), CFG.model_copy(update={"ann_min_pool": 50, "target_size": 50}),
                          HashEmbedder())  # fmt: skip
    assert capped.selection_index == "exact"


def test_the_history_is_every_example_of_every_published_version_once(monkeypatch, tmp_path) -> None:
    """Each version is read through the registry once per worker; later runs take it from the worker's cache,
    keyed by content hash (a new version is read, a torn cache file is read again)."""
    from ftops.curation.curate import to_example
    from ftops.datasets.versions import DatasetVersion
    from ftops.pipeline import curate as pipeline

    class Registry:
        def __init__(self) -> None:
            self.published = [DatasetVersion("qa", 1, "a" * 64), DatasetVersion("qa", 2, "b" * 64)]
            self.reads: list[tuple[int, str]] = []

        def versions(self, task_type: str) -> list[DatasetVersion]:
            return self.published

        def read(self, version: DatasetVersion, split: str) -> list[dict]:
            self.reads.append((version.version, split))
            shared = [to_example("asked in both versions", "a")] if split == "train" else []
            return [to_example(f"v{version.version} {split} question", "a"), *shared]

    monkeypatch.setenv("FTOPS_HOME", str(tmp_path))
    registry = Registry()
    monkeypatch.setattr(pipeline, "dataset_registry", lambda cfg: registry)
    expected = [("v1 train question", "train"), ("asked in both versions", "train"), ("v1 test question", "test"),
                ("v2 train question", "train"), ("v2 test question", "test")]  # fmt: skip
    assert pipeline.published_examples(load_config(), "qa") == expected
    assert len(registry.reads) == 4
    assert pipeline.published_examples(load_config(), "qa") == expected
    assert len(registry.reads) == 4  # every version from the cache
    registry.published.append(DatasetVersion("qa", 3, "c" * 64))
    (tmp_path / "cache" / "published" / "qa" / f"{'a' * 64}.json").write_text('[["v1 train q')  # torn
    assert pipeline.published_examples(load_config(), "qa") == [*expected, ("v3 train question", "train"),
                                                                 ("v3 test question", "test")]  # fmt: skip
    assert sorted(registry.reads[4:]) == [(1, "test"), (1, "train"), (3, "test"), (3, "train")]
    del registry.published[1]  # v2's tag deleted on the remote (a purge after an erasure)
    assert ("v2 train question", "train") not in pipeline.published_examples(load_config(), "qa")
    cached = sorted(p.stem[0] for p in (tmp_path / "cache" / "published" / "qa").iterdir())
    assert cached == ["a", "c"]  # v2's prompts are gone from this worker too
