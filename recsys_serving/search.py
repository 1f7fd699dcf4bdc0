"""Exact top-k by inner product, compiled: the search behind a cold start and every ranking the
API computes from factors.

Vectors are scanned by decreasing norm and the scan stops once the k-th best score beats what any
vector left could reach (``|y| |u|``, Cauchy-Schwarz). ALS gives often-rated movies the long
factors, so a new user's answer is usually settled after a few thousand of 60k movies. The scan
is one compiled loop (numba): each score is a 32-wide dot product from cache, compared with the
k-th best so far and kept in a k-heap only when it beats it; the filter is read only for those.
In numpy the same pruned scan needed a block product, a mask and a partition per block, about
three times the time (benchmarks/serve_bench.py).

Every answer is exact and deterministic: highest score first, ties to the lower row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .compiled import compiled

# The stop test's margin over |y| |u|: float32 dot products round by about d * 6e-8 of it.
MARGIN = 1e-4
NO_FILTER = np.ones(0, dtype=np.bool_)
Real = float | np.floating[Any]  # the kernels keep scores in float32


@compiled
def _worse(score_a: Real, row_a: int, score_b: Real, row_b: int) -> bool:
    """Whether (score_a, row_a) ranks below (score_b, row_b): lower score, or tied and a higher row."""
    return bool(score_a < score_b or (score_a == score_b and row_a > row_b))


@compiled
def _sift_down(scores: np.ndarray, rows: np.ndarray, size: int, score: Real, row: int) -> None:
    """Put (score, row) at the root of the heap ``scores[:size]`` (worst on top) and restore it."""
    at = 0
    while True:
        child = 2 * at + 1
        if child >= size:
            break
        if child + 1 < size and _worse(scores[child + 1], rows[child + 1], scores[child], rows[child]):
            child += 1
        if not _worse(scores[child], rows[child], score, row):
            break
        scores[at], rows[at] = scores[child], rows[child]
        at = child
    scores[at], rows[at] = score, row


@compiled
def top_k_by_norm(
    vectors: np.ndarray,
    norms: np.ndarray,
    order: np.ndarray,
    allowed: np.ndarray,
    query: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows and scores of the ``k`` best allowed vectors for ``query``, best first, and how many
    vectors were scanned.

    ``vectors`` are sorted by decreasing ``norms`` and ``order`` maps each back to its row;
    ``allowed`` is indexed by row (empty: every row allowed).
    """
    n, d = vectors.shape
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), 0
    heap_scores = np.empty(k, dtype=np.float32)  # the k best so far, worst on top
    heap_rows = np.empty(k, dtype=np.int64)
    length = 0.0
    for j in range(d):
        length += np.float64(query[j]) * np.float64(query[j])
    reach = math.sqrt(length) * (1.0 + MARGIN)
    filtered = allowed.size > 0
    size = 0
    scanned = n
    for position in range(n):
        if size == k and heap_scores[0] > norms[position] * reach:
            scanned = position  # nothing from here on can reach the k-th best
            break
        score = np.float32(0.0)
        for j in range(d):
            score += vectors[position, j] * query[j]
        if size == k and score < heap_scores[0]:
            continue
        row = order[position]
        if filtered and not allowed[row]:
            continue
        if size < k:
            at = size
            size += 1
            while at > 0:
                parent = (at - 1) // 2
                if not _worse(score, row, heap_scores[parent], heap_rows[parent]):
                    break
                heap_scores[at], heap_rows[at] = heap_scores[parent], heap_rows[parent]
                at = parent
            heap_scores[at], heap_rows[at] = score, row
        elif _worse(heap_scores[0], heap_rows[0], score, row):
            _sift_down(heap_scores, heap_rows, size, score, row)
    rows = np.empty(size, dtype=np.int64)
    scores = np.empty(size, dtype=np.float32)
    for last in range(size - 1, -1, -1):  # pop the worst into the last free place
        rows[last], scores[last] = heap_rows[0], heap_scores[0]
        _sift_down(heap_scores, heap_rows, last, heap_scores[last], heap_rows[last])
    return rows, scores, scanned


class NormOrderedScan:
    """Fixed vectors (item factors) searched exactly by :func:`top_k_by_norm`."""

    def __init__(self, vectors: np.ndarray):
        norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
        self.order = np.argsort(-norms, kind="stable").astype(np.int64)
        self.vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[self.order])
        self.norms = np.ascontiguousarray(norms[self.order])
        # Compiled (or loaded from numba's cache) here, when a bundle loads, not on a first request.
        self.top_k(np.zeros(self.vectors.shape[1], dtype=np.float32), 1)

    def top_k(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the ``k`` best vectors for ``query`` among the ``allowed`` rows (a
        boolean mask by row; None: all), best first, ties to the lower row."""
        rows, scores, _ = self.top_k_scanned(query, k, allowed)
        return rows, scores

    def top_k_scanned(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`top_k` and how many vectors the scan read before it could stop."""
        result: tuple[np.ndarray, np.ndarray, int] = top_k_by_norm(
            self.vectors,
            self.norms,
            self.order,
            NO_FILTER if allowed is None else allowed,
            np.ascontiguousarray(query, dtype=np.float32),
            int(k),
        )
        return result
