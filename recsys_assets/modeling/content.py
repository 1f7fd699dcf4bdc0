"""The content model: how movies the recommender was not trained on get scored beside the others.

Warm items (the model's catalogue) teach the map from content to the model: for ALS a ridge
regression from content vectors to item factors, so a cold movie gets estimated factors and a
known user's score for it is on the same scale as for warm movies; for item-item models (EASE,
item-kNN) a cold movie's similarity column is the weighted mean of its nearest warm movies'
columns in content space. Everything here is numpy/scipy/FAISS/scikit-learn, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from recsys_serving.bundle import ColdItems

from ..processing.content import ContentVectors


@dataclass(frozen=True)
class ContentModelRules:
    ridge_l2: float = 1.0  # ridge penalty of the content -> ALS factor map
    neighbours: int = 20  # warm neighbours averaged into a cold item's similarity column

    def __post_init__(self) -> None:
        if self.ridge_l2 <= 0 or self.neighbours < 1:
            raise ValueError("content ridge_l2 must be > 0 and neighbours >= 1")


def estimate_factors(
    warm_content: np.ndarray, warm_factors: np.ndarray, cold_content: np.ndarray, l2: float
) -> np.ndarray:
    """Cold items' factors predicted from their content by ridge regression fitted on warm items."""
    if len(cold_content) == 0:
        return np.zeros((0, warm_factors.shape[1]), dtype=np.float32)
    ridge = Ridge(alpha=l2).fit(warm_content, warm_factors)
    # scikit-learn returns one target as a flat array: keep [items, factors] whatever the factors.
    predicted = np.asarray(ridge.predict(cold_content), dtype=np.float32)
    return predicted.reshape(len(cold_content), warm_factors.shape[1])


def neighbour_weights(cold_content: np.ndarray, warm_content: np.ndarray, k: int) -> sp.csr_matrix:
    """cold x warm: each cold item's ``k`` most similar warm items (inner product of unit content
    vectors, FAISS flat search), positive similarities normalised to sum to one per row."""
    n_cold, n_warm = len(cold_content), len(warm_content)
    if n_cold == 0 or n_warm == 0:
        return sp.csr_matrix((n_cold, n_warm), dtype=np.float32)
    index = faiss.IndexFlatIP(warm_content.shape[1])
    index.add(np.ascontiguousarray(warm_content, dtype=np.float32))
    sims, rows = index.search(np.ascontiguousarray(cold_content, dtype=np.float32), min(k, n_warm))
    sims = np.where(rows >= 0, np.maximum(sims, 0.0), 0.0)
    totals = sims.sum(axis=1, keepdims=True)
    weights = np.divide(sims, totals, out=np.zeros_like(sims), where=totals > 0)
    matrix = sp.csr_matrix(
        (weights.ravel(), (np.repeat(np.arange(n_cold), rows.shape[1]), np.maximum(rows, 0).ravel())),
        shape=(n_cold, n_warm),
        dtype=np.float32,
    )
    matrix.eliminate_zeros()
    return matrix


def cold_items(
    content: ContentVectors,
    item_ids: np.ndarray,
    user_ids: np.ndarray,
    ratings: pl.DataFrame,
    *,
    item_factors: np.ndarray | None = None,
    item_similarity: sp.csr_matrix | None = None,
    rules: ContentModelRules | None = None,
) -> ColdItems:
    """The bundle's part for every movie with a content vector that the model does not score.

    ``ratings`` (user_id, movie_id) marks which cold movies each bundle user has already rated, so
    they are never recommended to them. Give ``item_factors`` for an ALS bundle, or
    ``item_similarity`` for an item-item one.
    """
    rules = rules or ContentModelRules()
    item_ids = np.asarray(item_ids, dtype=np.int64)
    cold_ids = np.setdiff1d(content.movie_ids, item_ids)
    warm = content.vectors[content.rows_of(item_ids)]
    cold = content.vectors[content.rows_of(cold_ids)]
    cold_factors = similarity = None
    if item_factors is not None:
        cold_factors = estimate_factors(warm, item_factors, cold, rules.ridge_l2)
    elif item_similarity is not None:
        weights = neighbour_weights(cold, warm, rules.neighbours)
        similarity = (item_similarity.tocsr() @ weights.T.tocsr()).tocsr().astype(np.float32)
    else:
        raise ValueError("cold items need the model's item factors (ALS) or item similarity")
    rated = ratings.select("user_id", "movie_id").filter(pl.col("movie_id").is_in(cold_ids.tolist()))
    users = np.searchsorted(user_ids, rated["user_id"].to_numpy())
    known = (users < len(user_ids)) & (
        user_ids[np.minimum(users, len(user_ids) - 1)] == rated["user_id"].to_numpy()
    )
    columns = np.searchsorted(cold_ids, rated["movie_id"].to_numpy())
    seen = sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (users[known], columns[known])),
        shape=(len(user_ids), len(cold_ids)),
    )
    seen.sum_duplicates()
    seen.data[:] = 1.0
    return ColdItems(
        movie_ids=cold_ids,
        content=np.ascontiguousarray(np.vstack([warm, cold]), dtype=np.float32),
        seen=seen,
        factors=cold_factors,
        similarity=similarity,
    )
