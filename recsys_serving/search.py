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
bytes a request reads are the cost that matters: a scan of ~9,500 of 60k vectors read 1.2 MB in
float32 and pushed the interpreter's own data out of the CPU's cache, so the rest of the request
ran slower too (reading 300 kB more per request cost a cold start 50-70 us in the server, against
6 us in a loop). So the codes of a block are stored dimension by dimension and scored 64 at a
time, in vector registers, and the stop test reads one norm per block; a filter that only leaves
out a few rows (a new user's liked movies) is a sorted list, looked up for the rare vectors that
would enter the top k, rather than a mask over every row built per request.

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
NO_ROWS = np.zeros(0, dtype=np.int64)
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
def _code_scores(codes: np.ndarray, block: int, query: np.ndarray, out: np.ndarray) -> None:
    """``out[i]``: the code score of the block's vector i (codes dimension-major within a block:
    the 64 products of one dimension are one vectorised multiply-add)."""
    out[:] = np.float32(0.0)
    for j in range(query.size):
        weight = query[j]
        for i in range(BLOCK):
            out[i] += np.float32(codes[block, j, i]) * weight


@inlined
def _left_out(allowed: np.ndarray, blocked: np.ndarray, row: int) -> bool:
    """Whether the filter leaves ``row`` out: not in the ``allowed`` mask (when there is one) or
    one of the ``blocked`` rows (ascending)."""
    if allowed.size and not allowed[row]:
        return True
    if blocked.size:
        at = np.searchsorted(blocked, row)
        return bool(at < blocked.size and blocked[at] == row)
    return False


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
    blocked: np.ndarray,
) -> int:
    """Offer the rows ``rows[start:stop]`` (ascending) the filter keeps, all of one vector's
    ``score``, to the k-heap; the heap's new size."""
    k = heap_scores.size
    for at in range(start, stop):
        row = rows[at]
        if _left_out(allowed, blocked, row):
            continue
        if size == k and not _worse(heap_scores[0], heap_rows[0], score, row):
            break  # the later rows tie with this one from higher rows: worse still
        size = _push(heap_scores, heap_rows, size, score, row)
    return size


@compiled
def top_k_by_norm(
    vectors: np.ndarray,
    block_norms: np.ndarray,
    rows_of: np.ndarray,
    rows_at: np.ndarray | None,
    codes: np.ndarray,
    code_scales: np.ndarray,
    code_slack: np.ndarray,
    allowed: np.ndarray,
    blocked: np.ndarray,
    query: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rows and scores of the ``k`` best rows the filter keeps for ``query``, best first, how many
    vectors were scanned (whole blocks) and how many of those were scored in float32.

    ``vectors`` are distinct and sorted by decreasing norm, ``block_norms[b]`` the norm of the
    first (longest) of block b; vector v is the one of the rows
    ``rows_of[rows_at[v]:rows_at[v + 1]]`` (ascending), or of row ``rows_of[v]`` alone when
    ``rows_at`` is None (numba then compiles the kernel without the shared-vector path: item
    factors repeat no vector, and that path cost their short scans a tenth). The filter:
    ``allowed`` indexed by row (empty: every row) and ``blocked`` rows (ascending; empty: none).
    ``codes[b, :, i]`` approximate vector ``b * BLOCK + i``: it is within ``code_slack[b]`` of
    ``code_scales[b] * codes[b, :, i]``.
    """
    n, d = vectors.shape
    k = min(k, rows_of.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), 0, 0
    heap_scores = np.empty(k, dtype=np.float32)  # the k best so far, worst on top
    heap_rows = np.empty(k, dtype=np.int64)
    coded = np.empty(BLOCK, dtype=np.float32)
    length = 0.0
    for j in range(d):
        length += np.float64(query[j]) * np.float64(query[j])
    reach = math.sqrt(length) * (1.0 + MARGIN)
    size = 0
    scanned = n
    scored = 0
    worst = -np.inf  # the k-th best score, once there are k
    for block in range(block_norms.size):
        start = block << BLOCK_SHIFT
        if worst > block_norms[block] * reach:
            scanned = start  # nothing from here on can reach the k-th best
            break
        _code_scores(codes, block, query, coded)
        # code scores below it cannot reach worst
        screen = _screen(worst, code_slack[block], reach, code_scales[block])
        for i in range(min(BLOCK, n - start)):
            if coded[i] < screen:
                continue
            position = start + i
            scored += 1
            score = np.float32(0.0)
            for j in range(d):
                score += vectors[position, j] * query[j]
            if score < worst:
                continue
            if rows_at is None:
                row = rows_of[position]
                if not _left_out(allowed, blocked, row):
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
                    blocked,
                )
            if size == k and heap_scores[0] != worst:
                worst = heap_scores[0]
                screen = _screen(worst, code_slack[block], reach, code_scales[block])
    rows = np.empty(size, dtype=np.int64)
    scores = np.empty(size, dtype=np.float32)
    for last in range(size - 1, -1, -1):  # pop the worst into the last free place
        rows[last], scores[last] = heap_rows[0], heap_scores[0]
        _sift_down(heap_scores, heap_rows, last, heap_scores[last], heap_rows[last])
    return rows, scores, scanned, scored


def block_codes(vectors: np.ndarray, norms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 codes of ``vectors`` (rows in scan order) by block of ``BLOCK``, dimension-major
    within a block (``codes[b, j, i]``: dimension j of vector ``b * BLOCK + i``; zeros past the
    last vector), one scale per block, and per block the most any of its vectors' score can exceed
    its code score, per unit of |query|.

    That slack is the vector's distance from its scaled codes (|u . (y - s c)| <= |u| |y - s c|)
    plus twice MARGIN of |y| and of that distance: float32 rounding of both dot products.
    """
    n, d = vectors.shape
    blocks = -(-n // BLOCK)
    padded = np.zeros((blocks * BLOCK, d))
    padded[:n] = vectors
    largest = np.abs(padded).reshape(blocks, BLOCK * d).max(axis=1)
    scales = np.where(largest > 0, largest / 127.0, 1.0)
    scale_of = np.repeat(scales, BLOCK)[:, None]
    codes = np.clip(np.rint(padded / scale_of), -127, 127).astype(np.int8)
    error = np.linalg.norm(padded - codes * scale_of, axis=1)[:n]
    slack = np.zeros(blocks * BLOCK)
    slack[:n] = error + 2 * MARGIN * (norms + error)
    by_dimension = codes.reshape(blocks, BLOCK, d).transpose(0, 2, 1)
    return np.ascontiguousarray(by_dimension), scales, slack.reshape(blocks, BLOCK).max(axis=1)


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
        self.block_norms = np.ascontiguousarray(self.norms[::BLOCK])  # each block's longest
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
        self,
        query: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the ``k`` best vectors for ``query``, best first, ties to the lower
        row, among the ``allowed`` rows (a boolean mask by row; None: all) but the ``blocked`` ones
        (row numbers; for a few rows it spares building a mask over every row)."""
        rows, scores, _, _ = self.top_k_scanned(query, k, allowed, blocked)
        return rows, scores

    def top_k_scanned(
        self,
        query: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """:meth:`top_k`, how many vectors the scan read before it could stop (whole blocks) and
        how many of those it scored in float32 (the others' codes could not reach the k-th best)."""
        result: tuple[np.ndarray, np.ndarray, int, int] = top_k_by_norm(
            self.vectors,
            self.block_norms,
            self.rows_of,
            self.rows_at,
            self.codes,
            self.code_scales,
            self.code_slack,
            NO_FILTER if allowed is None else allowed,
            NO_ROWS if blocked is None else np.sort(np.asarray(blocked, dtype=np.int64)),  # for bisection
            np.ascontiguousarray(query, dtype=np.float32),
            int(k),
        )
        return result
