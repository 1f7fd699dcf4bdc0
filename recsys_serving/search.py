"""Exact top-k by inner product, compiled: the search behind a cold start and every ranking the
API computes from factors.

Vectors are scanned by decreasing norm and the scan stops once the k-th best score beats what any
vector left could reach (``|y| |u|``, Cauchy-Schwarz). ALS gives often-rated movies the long
factors, so a new user's answer is usually settled after a few thousand of 60k movies. The scan
is one compiled loop (numba): each score is a 32-wide dot product from cache, compared with the
k-th best so far and kept in a k-heap only when it beats it; the filter is read only for those.
In numpy the same pruned scan needed a block product, a mask and a partition per block, about
three times the time (benchmarks/serve_bench.py).

Each vector is first scored from int8 codes (a scale shared by 64 consecutive vectors, which the
norm order makes of similar length) and read in float32 only when that score, plus what the
codes can be off by, still reaches the k-th best: about one in a hundred. Inside the API the
float32 reads were the cost that mattered: a scan of ~9,500 of 60k vectors read 1.2 MB and pushed
the interpreter's own data out of the CPU's cache, so the rest of the request ran slower too. In
a tight loop, where everything stays cached, codes cost a little more; a cold start's server CPU
time per request is what they lower (benchmarks/serve_bench.py).

Identical vectors are scored once: movies the model was not trained on get factors estimated from
their content, and about half of them share their content (genres, year) with another.

Every answer is exact and deterministic: highest score first, ties to the lower row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .compiled import compiled, inlined

# The stop test's margin over |y| |u|: float32 dot products round by about d * 6e-8 of it.
MARGIN = 1e-4
# Vectors per code scale: a power of two, so a vector's block is a shift of its position.
BLOCK_SHIFT = 6
BLOCK = 1 << BLOCK_SHIFT
NO_FILTER = np.ones(0, dtype=np.bool_)
Real = float | np.floating[Any]  # the kernels keep scores in float32


@inlined
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


@inlined
def _push(scores: np.ndarray, rows: np.ndarray, size: int, score: Real, row: int) -> int:
    """Offer (score, row) to the k-heap ``scores[:size]`` (k: its capacity); the heap's new size."""
    if size < scores.size:
        at = size
        while at > 0:
            parent = (at - 1) // 2
            if not _worse(score, row, scores[parent], rows[parent]):
                break
            scores[at], rows[at] = scores[parent], rows[parent]
            at = parent
        scores[at], rows[at] = score, row
        return size + 1
    if _worse(scores[0], rows[0], score, row):
        _sift_down(scores, rows, size, score, row)
    return size


@inlined
def _screen(worst: Real, slack: float, reach: float, scale: float) -> Real:
    """The least code score (in its block's scale) of a vector that may still reach ``worst``."""
    return (worst - slack * reach) / scale


@inlined
def _offer(
    heap_scores: np.ndarray,
    heap_rows: np.ndarray,
    size: int,
    score: Real,
    rows: np.ndarray,
    start: int,
    stop: int,
    allowed: np.ndarray,
) -> int:
    """Offer the allowed ``rows[start:stop]`` (ascending), all of one vector's ``score``, to the
    k-heap; the heap's new size."""
    k = heap_scores.size
    for at in range(start, stop):
        row = rows[at]
        if allowed.size and not allowed[row]:
            continue
        if size == k and not _worse(heap_scores[0], heap_rows[0], score, row):
            break  # the later rows tie with this one from higher rows: worse still
        size = _push(heap_scores, heap_rows, size, score, row)
    return size


@compiled
def top_k_by_norm(
    vectors: np.ndarray,
    norms: np.ndarray,
    rows_of: np.ndarray,
    rows_at: np.ndarray | None,
    codes: np.ndarray,
    code_scales: np.ndarray,
    code_slack: np.ndarray,
    allowed: np.ndarray,
    query: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rows and scores of the ``k`` best allowed rows for ``query``, best first, how many vectors
    were scanned and how many of those were scored in float32.

    ``vectors`` are distinct and sorted by decreasing ``norms``; vector v is the one of the rows
    ``rows_of[rows_at[v]:rows_at[v + 1]]`` (ascending), or of row ``rows_of[v]`` alone when
    ``rows_at`` is None (numba then compiles the kernel without the shared-vector path: item
    factors repeat no vector, and that path cost their short scans a tenth). ``allowed`` is
    indexed by row (empty: every row allowed). ``codes`` approximate the vectors: vector v is
    within ``code_slack[b]`` of ``code_scales[b] * codes[v]`` (b: its block of ``BLOCK``).
    """
    n, d = vectors.shape
    k = min(k, rows_of.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), 0, 0
    heap_scores = np.empty(k, dtype=np.float32)  # the k best so far, worst on top
    heap_rows = np.empty(k, dtype=np.int64)
    length = 0.0
    for j in range(d):
        length += np.float64(query[j]) * np.float64(query[j])
    reach = math.sqrt(length) * (1.0 + MARGIN)
    size = 0
    scanned = n
    scored = 0
    worst = -np.inf  # the k-th best score, once there are k
    screen: Real = -np.inf  # code scores below it cannot reach worst (in the current block's scale)
    for position in range(n):
        if worst > norms[position] * reach:
            scanned = position  # nothing from here on can reach the k-th best
            break
        if position & (BLOCK - 1) == 0:
            block = position >> BLOCK_SHIFT
            screen = _screen(worst, code_slack[block], reach, code_scales[block])
        coded = np.float32(0.0)
        for j in range(d):
            coded += np.float32(codes[position, j]) * query[j]
        if coded < screen:
            continue
        scored += 1
        score = np.float32(0.0)
        for j in range(d):
            score += vectors[position, j] * query[j]
        if score < worst:
            continue
        if rows_at is None:
            row = rows_of[position]
            if allowed.size == 0 or allowed[row]:
                size = _push(heap_scores, heap_rows, size, score, row)
        else:
            size = _offer(
                heap_scores,
                heap_rows,
                size,
                score,
                rows_of,
                rows_at[position],
                rows_at[position + 1],
                allowed,
            )
        if size == k and heap_scores[0] != worst:
            worst = heap_scores[0]
            block = position >> BLOCK_SHIFT
            screen = _screen(worst, code_slack[block], reach, code_scales[block])
    rows = np.empty(size, dtype=np.int64)
    scores = np.empty(size, dtype=np.float32)
    for last in range(size - 1, -1, -1):  # pop the worst into the last free place
        rows[last], scores[last] = heap_rows[0], heap_scores[0]
        _sift_down(heap_scores, heap_rows, last, heap_scores[last], heap_rows[last])
    return rows, scores, scanned, scored


def block_codes(vectors: np.ndarray, norms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 codes of ``vectors`` (rows in scan order), one scale per ``BLOCK`` of them, and per
    block the most any of its vectors' score can exceed its code score, per unit of |query|.

    That slack is the vector's distance from its scaled codes (|u . (y - s c)| <= |u| |y - s c|)
    plus twice MARGIN of |y| and of that distance: float32 rounding of both dot products.
    """
    n, d = vectors.shape
    blocks = -(-n // BLOCK)
    padded = np.zeros((blocks * BLOCK, d))
    padded[:n] = vectors
    largest = np.abs(padded).reshape(blocks, BLOCK * d).max(axis=1)
    scales = np.where(largest > 0, largest / 127.0, 1.0)
    scale_of = np.repeat(scales, BLOCK)[:n, None]
    codes = np.clip(np.rint(vectors / scale_of), -127, 127).astype(np.int8)
    error = np.linalg.norm(vectors.astype(np.float64) - codes * scale_of, axis=1)
    slack = np.zeros(blocks * BLOCK)
    slack[:n] = error + 2 * MARGIN * (norms + error)
    return np.ascontiguousarray(codes), scales, slack.reshape(blocks, BLOCK).max(axis=1)


class NormOrderedScan:
    """Fixed vectors (item factors) searched exactly by :func:`top_k_by_norm`."""

    def __init__(self, vectors: np.ndarray):
        vectors = np.asarray(vectors, dtype=np.float32)
        distinct, first, of_row = np.unique(vectors, axis=0, return_index=True, return_inverse=True)
        of_row = of_row.ravel()  # numpy 2.0 and 2.1 shaped the inverse like the input
        norms = np.linalg.norm(distinct.astype(np.float64), axis=1)
        # Longest first; equal norms in row order, so a scan is deterministic.
        by_norm = np.lexsort((first, -norms))
        position = np.empty(len(by_norm), dtype=np.int64)
        position[by_norm] = np.arange(len(by_norm))
        self.vectors = np.ascontiguousarray(distinct[by_norm])
        self.norms = np.ascontiguousarray(norms[by_norm])
        # Each vector's rows, ascending: rows sorted by their vector's place, stably.
        self.rows_of = np.argsort(position[of_row], kind="stable").astype(np.int64)
        self.rows_at: np.ndarray | None = np.concatenate(
            [[0], np.cumsum(np.bincount(position[of_row], minlength=len(by_norm)))]
        )
        if len(distinct) == len(vectors):
            self.rows_at = None
        self.codes, self.code_scales, self.code_slack = block_codes(self.vectors, self.norms)
        # Compiled (or loaded from numba's cache) here, when a bundle loads, not on a first request.
        self.top_k(np.zeros(self.vectors.shape[1], dtype=np.float32), 1)

    def top_k(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the ``k`` best vectors for ``query`` among the ``allowed`` rows (a
        boolean mask by row; None: all), best first, ties to the lower row."""
        rows, scores, _, _ = self.top_k_scanned(query, k, allowed)
        return rows, scores

    def top_k_scanned(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """:meth:`top_k`, how many vectors the scan read before it could stop and how many of
        those it scored in float32 (the others' codes could not reach the k-th best)."""
        result: tuple[np.ndarray, np.ndarray, int, int] = top_k_by_norm(
            self.vectors,
            self.norms,
            self.rows_of,
            self.rows_at,
            self.codes,
            self.code_scales,
            self.code_slack,
            NO_FILTER if allowed is None else allowed,
            np.ascontiguousarray(query, dtype=np.float32),
            int(k),
        )
        return result
