"""Movies the served model was not trained on (new releases, rarely rated ones): scored from
their content, as the bundle's cold part prepared them (``ColdItems``).

Cold items live in catalogue rows after the model's items (``n_items + j`` for cold item ``j``).
A known or new user's score for a cold movie is on the model's own scale (estimated ALS factors,
or similarity columns estimated from content neighbours). Estimates from content are shrunk
towards the average movie, so cold movies would rarely outscore warm ones on their own: the
best ``slots`` cold movies with a positive score take the last places of a list instead, shown
with their estimated scores (the way new releases get exposure at all). A known user's best cold
movies are ranked when the bundle is built (``cold_top_rows``), like the warm lists; filters
that exhaust them, and new users, are scored here. Similar movies of a cold movie come from
content similarity (cosines of unit content vectors), ranked when the bundle is built
(``cold_similar_rows``) and scanned per request only for a k beyond those lists.
"""

from __future__ import annotations

import numpy as np

from .bundle import ColdItems
from .compiled import compiled
from .models import ColdScorer, Model, Scored, exact
from .search import NormOrderedScan


class ColdCatalogue:
    def __init__(self, cold: ColdItems, model: Model, n_items: int, use_similar_lists: bool = True):
        self.cold, self.n_items = cold, n_items
        self.n_cold = len(cold.movie_ids)
        self.scorer = ColdScorer(model, cold.factors, cold.similarity)
        # ALS: a new user's cold slots come from the same pruned scan as their warm items.
        self.factor_scan = None if self.scorer.factors is None else NormOrderedScan(self.scorer.factors)
        self.content = np.ascontiguousarray(cold.content, dtype=np.float32)
        self.similar_rows = cold.similar_rows if use_similar_lists else None
        self.similar_scores = cold.similar_scores if use_similar_lists else None

    def seen(self, user_row: int) -> np.ndarray:
        seen = self.cold.seen
        rows: np.ndarray = seen.indices[seen.indptr[user_row] : seen.indptr[user_row + 1]]
        return rows

    def for_user(
        self, user_row: int, slots: int, blocked: np.ndarray, allowed_mask: np.ndarray | None
    ) -> Scored:
        """A known user's ``slots`` best cold items (catalogue rows) they have not rated, without
        the ``blocked`` cold positions and, with a mask, only allowed ones."""
        top_rows, top_scores = self.cold.top_rows, self.cold.top_scores
        if top_rows is not None and top_scores is not None and slots <= top_rows.shape[1]:
            if not blocked.size and allowed_mask is None and top_rows[user_row, slots - 1] >= 0:
                return Scored(top_rows[user_row, :slots] + self.n_items, top_scores[user_row, :slots])
            rows, scores = top_rows[user_row], top_scores[user_row]
            complete = rows[-1] < 0
            keep = rows >= 0
            if blocked.size:
                keep &= ~np.isin(rows, blocked)
            if allowed_mask is not None:
                keep &= allowed_mask[np.maximum(rows, 0)]
            if keep.sum() >= slots or complete:
                return Scored(rows[keep][:slots].astype(np.int64) + self.n_items, scores[keep][:slots])
        allowed = np.ones(self.n_cold, dtype=bool) if allowed_mask is None else allowed_mask.copy()
        allowed[self.seen(user_row)] = False
        allowed[blocked] = False
        return self.best(self.scorer.user_scores(user_row, user_row + 1)[0], slots, allowed)

    def best_for_vector(self, vector: np.ndarray, slots: int, allowed: np.ndarray | None) -> Scored:
        """ALS: the ``slots`` best allowed (all without a mask) cold items for a user's factors."""
        assert self.factor_scan is not None
        rows, scores = self.factor_scan.top_k(vector, slots, allowed)
        return Scored(rows + self.n_items, scores)

    def best(self, scores: np.ndarray, slots: int, allowed: np.ndarray | None) -> Scored:
        """The ``slots`` best allowed (all without a mask) cold items, as catalogue rows."""
        found = exact(scores, slots, allowed)
        return Scored(found.rows + self.n_items, found.scores)

    def similar(self, catalogue_row: int, k: int) -> Scored:
        """Movies (warm or cold) nearest in content to ``catalogue_row``, itself excluded, best
        first, ties to the lower row."""
        lists, scores = self.similar_rows, self.similar_scores
        if catalogue_row >= self.n_items and lists is not None and scores is not None and k <= lists.shape[1]:
            rows = lists[catalogue_row - self.n_items, :k]
            listed = rows >= 0  # -1 only past the last other movie of a tiny catalogue
            return Scored(rows[listed].astype(np.int64), scores[catalogue_row - self.n_items, :k][listed])
        cosines = self.content @ self.content[catalogue_row]
        cosines[catalogue_row] = -np.inf
        return exact(cosines, k)


NO_REASONS = np.zeros(0, dtype=np.int64)


def merge(warm: Scored, cold: Scored, k: int) -> Scored:
    """At most ``k`` items: the cold candidates with a positive score take the last places, the
    best warm items the rest, in score order (ties to warm); cold ones carry no explanation."""
    because = (
        NO_REASONS
        if warm.because is None
        else np.array([-1 if b is None else b for b in warm.because], dtype=np.int64)
    )
    rows, scores, because = merged(
        np.asarray(warm.rows, dtype=np.int64),
        np.asarray(warm.scores, dtype=np.float32),
        because,
        np.asarray(cold.rows, dtype=np.int64),
        np.asarray(cold.scores, dtype=np.float32),
        k,
    )
    explained = warm.because is not None
    return Scored(rows, scores, [None if b < 0 else b for b in because.tolist()] if explained else None)


@compiled
def merged(
    rows: np.ndarray,
    scores: np.ndarray,
    because: np.ndarray,
    cold_rows: np.ndarray,
    cold_scores: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`merge` on arrays (``because`` -1: none; empty: no reasons at all), for compiled
    callers too. Both lists are best first; each cold candidate goes after every item scoring at
    least as much."""
    keep = cold_scores > 0
    candidates, candidate_scores = cold_rows[keep], cold_scores[keep]
    if candidates.size == 0:
        return rows, scores, because
    n_warm = min(rows.size, k - candidates.size)
    total = n_warm + candidates.size
    out_rows = np.empty(total, dtype=np.int64)
    out_scores = np.empty(total, dtype=np.float32)
    out_because = np.empty(total, dtype=np.int64)
    warm = cold = 0
    for at in range(total):
        if cold < candidates.size and (warm == n_warm or scores[warm] < candidate_scores[cold]):
            out_rows[at], out_scores[at], out_because[at] = candidates[cold], candidate_scores[cold], -1
            cold += 1
        else:
            out_rows[at], out_scores[at] = rows[warm], scores[warm]
            out_because[at] = because[warm] if because.size else -1
            warm += 1
    return out_rows, out_scores, out_because
