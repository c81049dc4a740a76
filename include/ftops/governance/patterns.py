"""Recurring error patterns: clusters of similar failing prompts, found with a FAISS range search
(:func:`ftops.curation.vector_index.neighbours_within`, the index code curation uses too).

A failure's neighbours are the failures whose prompt embeddings lie within ``similarity`` (cosine) of it.
Clusters are grown greedily: the failure with the most unclaimed neighbours founds a cluster of itself and
those neighbours, which are then claimed; repeat while a founder has at least ``min_size - 1`` neighbours
left. Every member of a cluster is within ``similarity`` of its founder, so a cluster is a tight group of
look-alike prompts, never a chain of loosely linked ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cluster:
    """A group of similar failures: row indices, the founder first."""

    members: list[int]
    mean_similarity: float  # mean cosine of the members to the founder

    @property
    def size(self) -> int:
        return len(self.members)


def find_clusters(vectors: np.ndarray, *, similarity: float, min_size: int) -> list[Cluster]:
    """Clusters of at least ``min_size`` failures whose prompts are within ``similarity`` of a founder.

    Args:
        vectors: L2-normalised prompt embeddings, one row per failure (float32).
        similarity: Cosine at or above which two prompts count as similar.
        min_size: Smallest cluster reported.

    Returns:
        The clusters, largest first.
    """
    from ftops.curation.vector_index import neighbours_within

    n = len(vectors)
    if n < min_size or n == 0:
        return []
    neighbours = neighbours_within(vectors, similarity)
    claimed: set[int] = set()
    clusters: list[Cluster] = []
    while True:
        best, best_members = -1, list[int]()
        for i in range(n):
            if i in claimed:
                continue
            members = [j for j in neighbours[i] if j not in claimed]
            if len(members) > len(best_members) or (len(members) == len(best_members) and best < 0):
                best, best_members = i, members
        if best < 0 or len(best_members) < min_size:
            return clusters
        ordered = [best] + sorted((j for j in best_members if j != best), key=lambda j: -neighbours[best][j])
        mean = float(np.mean([neighbours[best][j] for j in ordered]))
        clusters.append(Cluster(ordered, round(mean, 4)))
        claimed.update(ordered)
