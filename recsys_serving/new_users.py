"""A new user's list in one compiled call: ALS behind an exact scan, the API's default.

A cold start is a fold-in, a scan of the model's items, a scan of the cold items for the cold
slots, their merge and, when asked, explanations. Each was already a compiled kernel, but called
one after the other from Python (arguments unboxed and results boxed per call, small numpy steps
between them) they cost about 20 of a cold start's 65 us in-process, and inside the server that
glue costs two to three times as much (benchmarks/cold_start_steps.py, serve_bench.py). Here the
same kernels (:func:`.confidence.fold_user`, :func:`.search.top_k_by_norm`,
:func:`.confidence.largest_terms`) run inside one call. Answers are those of the step-by-step
path (:meth:`.engine.Engine.liked_query` and what follows), which serves approximate indexes and
the item-item kinds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cold import merged
from .compiled import compiled
from .confidence import UserSolver, fold_user, largest_terms
from .models import Scored
from .search import NO_FILTER, NormOrderedScan, top_k_by_norm

# A scan's arrays, in top_k_by_norm's order: vectors, block_norms, rows_of, rows_at, codes,
# code_scales, code_slack.
ScanArrays = tuple[Any, ...]


def scan_arrays(scan: NormOrderedScan) -> ScanArrays:
    return (
        scan.vectors,
        scan.block_norms,
        scan.rows_of,
        scan.rows_at,
        scan.codes,
        scan.code_scales,
        scan.code_slack,
    )


@compiled
def new_user_list(
    solver: tuple[Any, ...],
    liked_value: float,
    warm: ScanArrays,
    cold: ScanArrays | None,
    known_rows: np.ndarray,
    n_items: int,
    allowed: np.ndarray,
    cold_allowed: np.ndarray,
    k: int,
    slots: int,
    explain: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, scores and, per row, the liked row that explains it (-1: none) of a new user who
    likes ``known_rows`` (catalogue rows; those from ``n_items`` on are cold items, only left
    out). ``allowed``/``cold_allowed``: masks by row of the model's and the cold items (empty:
    all); liked movies are left out either way."""
    item_factors, weighting, gram, regularization = solver
    liked = known_rows[known_rows < n_items]
    values = np.full(liked.size, liked_value, dtype=np.float32)
    vector, solved, positive, confidence = fold_user(
        (item_factors, liked, values, weighting, gram, regularization)
    )
    rows, scores, _, _ = top_k_by_norm(
        warm[0], warm[1], warm[2], warm[3], warm[4], warm[5], warm[6], allowed, np.sort(liked), vector, k
    )
    because = np.full(rows.size if explain else 0, -1, dtype=np.int64)  # empty: no reasons asked
    if explain and liked.size and rows.size:
        because = liked[largest_terms(rows, liked, item_factors, confidence, solved, positive)]
    if cold is None or slots <= 0:
        return rows, scores, because
    liked_cold = np.sort(known_rows[known_rows >= n_items] - n_items)
    cold_rows, cold_scores, _, _ = top_k_by_norm(
        cold[0], cold[1], cold[2], cold[3], cold[4], cold[5], cold[6], cold_allowed, liked_cold, vector, slots
    )
    return merged(rows, scores, because, cold_rows + n_items, cold_scores, k)


class NewUserLists:
    """:func:`new_user_list` over one bundle's ALS factors, scans and cold items."""

    def __init__(
        self,
        users: UserSolver,
        liked_value: float,
        scan: NormOrderedScan,
        cold_scan: NormOrderedScan | None,
        n_items: int,
        cold_slots: int,
    ):
        self.solver = (users.item_factors, users.weighting, users.gram, users.regularization)
        self.liked_value = liked_value
        self.warm, self.n_items, self.cold_slots = scan_arrays(scan), n_items, cold_slots
        self.cold = None if cold_scan is None or cold_slots <= 0 else scan_arrays(cold_scan)
        # Compiled (or loaded from numba's cache) with the bundle, not on a first request.
        for explain in (False, True):
            self(np.zeros(1, dtype=np.int64), 1, explain=explain)

    def __call__(
        self,
        known_rows: np.ndarray,
        k: int,
        allowed: np.ndarray = NO_FILTER,
        cold_allowed: np.ndarray = NO_FILTER,
        explain: bool = False,
    ) -> Scored:
        rows, scores, because = new_user_list(
            self.solver,
            self.liked_value,
            self.warm,
            self.cold,
            known_rows,
            self.n_items,
            allowed,
            cold_allowed,
            int(k),
            min(self.cold_slots, int(k)),
            explain,
        )
        return Scored(rows, scores, [None if b < 0 else b for b in because.tolist()] if explain else None)
