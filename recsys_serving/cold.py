"""Movies the served model was not trained on (new releases, rarely rated ones): scored from
their content, as the bundle's cold part prepared them (``ColdItems``).

Cold items live in catalogue rows after the model's items (``n_items + j`` for cold item ``j``).
A known or new user's score for a cold movie is on the model's own scale (estimated ALS factors,
or similarity columns estimated from content neighbours). Estimates from content are shrunk
towards the average movie, so cold movies would rarely outscore warm ones on their own: the
best ``slots`` cold movies with a positive score take the last places of a list instead, shown
with their estimated scores (the way new releases get exposure at all). Similar movies of a cold movie come from content
similarity (a FAISS inner-product search over unit content vectors).
"""

from __future__ import annotations

import faiss
import numpy as np

from .bundle import ColdItems
from .models import FactorModel, ItemItemModel, Model, Scored, exact


class ColdCatalogue:
    def __init__(self, cold: ColdItems, model: Model, n_items: int):
        self.cold, self.model, self.n_items = cold, model, n_items
        self.n_cold = len(cold.movie_ids)
        self.content_index = faiss.IndexFlatIP(cold.content.shape[1])
        self.content_index.add(np.ascontiguousarray(cold.content, dtype=np.float32))
        self.factors = None if cold.factors is None else np.ascontiguousarray(cold.factors, dtype=np.float32)
        self.similarity = None if cold.similarity is None else cold.similarity.tocsr().astype(np.float32)

    def user_scores(self, user_row: int) -> np.ndarray:
        """A known user's scores for every cold item (the model's scale)."""
        if isinstance(self.model, FactorModel) and self.factors is not None:
            scores: np.ndarray = self.factors @ self.model.user_factors[user_row]
            return scores
        assert isinstance(self.model, ItemItemModel)
        inputs = self.model.inputs
        start, end = inputs.indptr[user_row], inputs.indptr[user_row + 1]
        return self._item_item(inputs.indices[start:end], inputs.data[start:end])

    def liked_scores(self, liked_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user's scores for every cold item, from the movies they like."""
        if isinstance(self.model, FactorModel) and self.factors is not None:
            scores: np.ndarray = self.factors @ self.model.liked_vector(liked_rows, values)
            return scores
        assert isinstance(self.model, ItemItemModel)
        return self._item_item(liked_rows, self.model.input_values(values))

    def _item_item(self, liked_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.similarity is None or liked_rows.size == 0:
            return np.zeros(self.n_cold, dtype=np.float32)
        block = self.similarity[liked_rows]
        return np.asarray(block.T @ values.astype(np.float32)).ravel().astype(np.float32, copy=False)

    def seen(self, user_row: int) -> np.ndarray:
        seen = self.cold.seen
        rows: np.ndarray = seen.indices[seen.indptr[user_row] : seen.indptr[user_row + 1]]
        return rows

    def best(self, scores: np.ndarray, slots: int, allowed: np.ndarray) -> Scored:
        """The ``slots`` best allowed cold items, as catalogue rows."""
        found = exact(scores, slots, allowed)
        return Scored(found.rows + self.n_items, found.scores)

    def similar(self, catalogue_row: int, k: int) -> Scored:
        """Movies (warm or cold) nearest in content to ``catalogue_row``, itself excluded."""
        query = self.cold.content[catalogue_row : catalogue_row + 1]
        take = min(k + 1, self.content_index.ntotal)
        scores, rows = self.content_index.search(query, take)
        keep = (rows[0] >= 0) & (rows[0] != catalogue_row)
        return Scored(rows[0][keep][:k].astype(np.int64), scores[0][keep][:k])


def merge(warm: Scored, cold: Scored, k: int) -> Scored:
    """At most ``k`` items: the cold candidates with a positive score take the last places, the
    best warm items the rest, in score order (ties to warm); cold ones carry no explanation."""
    keep = cold.scores > 0
    if not keep.any():
        return warm
    cold_rows, cold_scores = cold.rows[keep], cold.scores[keep]
    n_warm = min(warm.rows.size, k - cold_rows.size)
    rows = np.concatenate([warm.rows[:n_warm], cold_rows])
    scores = np.concatenate([warm.scores[:n_warm], cold_scores]).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    because = None
    if warm.because is not None:
        reasons = warm.because[:n_warm] + [None] * cold_rows.size
        because = [reasons[i] for i in order.tolist()]
    return Scored(rows[order], scores[order], because)
