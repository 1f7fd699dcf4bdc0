"""Recommendations from one loaded bundle.

Everything per request is a few numpy/FAISS operations on arrays prepared once at load time:
no DataFrame, no file access, no Python loop over the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .bundle import Bundle
from .confidence import fold_in, weight_rows

# Above this many results, an exact numpy ranking beats asking FAISS for a long, filtered list.
INDEX_SEARCH_LIMIT = 256


@dataclass(frozen=True)
class Scored:
    rows: np.ndarray  # item rows, best first
    scores: np.ndarray
    because: list[int | None] | None = None  # item row of the liked movie that contributed most


class Engine:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.version = bundle.version
        self.item_ids = bundle.item_ids
        self.user_ids = bundle.user_ids
        self.item_factors = np.ascontiguousarray(bundle.item_factors, dtype=np.float32)
        self.user_factors = np.ascontiguousarray(bundle.user_factors, dtype=np.float32)
        self.n_items = len(self.item_ids)
        self.seen = bundle.seen
        self.liked = bundle.liked
        self.index = bundle.index
        self.gram = self.item_factors.T.astype(np.float64) @ self.item_factors.astype(np.float64)
        norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        self.unit_factors = np.divide(
            self.item_factors, norms, out=np.zeros_like(self.item_factors), where=norms > 0
        )

        movies = {row["movie_id"]: row for row in bundle.movies.to_dicts()}
        self.titles = [movies.get(int(m), {}).get("title") or f"movie {m}" for m in self.item_ids]
        self.years = [movies.get(int(m), {}).get("year") for m in self.item_ids]
        self.genres = [list(movies.get(int(m), {}).get("genres") or []) for m in self.item_ids]
        # Each movie's response fields, built once: a response only adds rank and score.
        self.movie_fields = [
            {"movieId": int(m), "title": t, "year": y, "genres": g}
            for m, t, y, g in zip(self.item_ids, self.titles, self.years, self.genres, strict=True)
        ]
        self.genre_names = sorted({g for gs in self.genres for g in gs})
        self.genre_masks = {g: np.zeros(self.n_items, dtype=bool) for g in self.genre_names}
        for row, names in enumerate(self.genres):
            for g in names:
                self.genre_masks[g][row] = True
        # The full ranking by number of raters (popularity.json holds its head for other readers).
        self.popular_rows = np.argsort(-self.seen.getnnz(axis=0), kind="stable")
        self.liked_value = float(bundle.manifest["fold_in"].get("liked_value", 1.0))

    # ------------------------------------------------------------------ lookups

    @staticmethod
    def lookup(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Row of each value in the sorted ``ids``, -1 where absent."""
        values = np.asarray(values, dtype=np.int64)
        position = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
        return np.where(ids[position] == values, position, -1)

    def item_rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """Rows of known movies (unknown ids dropped), in the given order."""
        rows = self.lookup(self.item_ids, movie_ids)
        return rows[rows >= 0]

    def item_row(self, movie_id: int) -> int | None:
        row = int(self.lookup(self.item_ids, np.array([movie_id]))[0])
        return None if row < 0 else row

    def user_row(self, user_id: int) -> int | None:
        row = int(self.lookup(self.user_ids, np.array([user_id]))[0])
        return None if row < 0 else row

    def unknown_genres(self, genres: list[str]) -> list[str]:
        return [g for g in genres if g not in self.genre_masks]

    # ------------------------------------------------------------------ ranking

    def _blocked(self, rows: np.ndarray) -> np.ndarray:
        blocked = np.zeros(self.n_items, dtype=bool)
        blocked[rows] = True
        return blocked

    def _allowed_by_genre(self, genres: list[str]) -> np.ndarray | None:
        if not genres:
            return None
        allowed = np.zeros(self.n_items, dtype=bool)
        for g in genres:
            allowed |= self.genre_masks[g]
        return allowed

    def _rank(self, vector: np.ndarray, k: int, blocked: np.ndarray, genres: list[str]) -> Scored:
        allowed = self._allowed_by_genre(genres)
        if allowed is not None:
            # Exact scores over the allowed subset: a filtered index search could return fewer.
            return self._exact(vector, k, np.flatnonzero(allowed & ~blocked))
        # Ask the index for enough results that k survive removing the blocked items; when that is
        # a large share of the catalogue, one exact matrix-vector product is cheaper than the index.
        wanted = int(min(self.n_items, k + blocked.sum()))
        if wanted > INDEX_SEARCH_LIMIT:
            return self._exact(vector, k, np.flatnonzero(~blocked))
        scores, ids = self.index.search(vector[None, :].astype(np.float32), wanted)
        ids, scores = ids[0], scores[0]
        rows = self.lookup(self.item_ids, ids[ids >= 0])
        scores = scores[ids >= 0]
        keep = (rows >= 0) & ~blocked[np.maximum(rows, 0)]
        return Scored(rows[keep][:k], scores[keep][:k])

    def _exact(self, vector: np.ndarray, k: int, candidates: np.ndarray) -> Scored:
        if candidates.size == 0:
            return Scored(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        scores = self.item_factors[candidates] @ vector
        take = min(k, candidates.size)
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top], kind="stable")]
        return Scored(candidates[top], scores[top])

    def recommend_user(
        self, user_row: int, k: int, exclude_rows: np.ndarray, genres: list[str], explain: bool
    ) -> Scored:
        seen = self.seen.indices[self.seen.indptr[user_row] : self.seen.indptr[user_row + 1]]
        blocked = self._blocked(np.concatenate([seen, exclude_rows]).astype(np.int64))
        result = self._rank(self.user_factors[user_row], k, blocked, genres)
        if not explain:
            return result
        start, end = self.liked.indptr[user_row], self.liked.indptr[user_row + 1]
        because = self._explain(result.rows, self.liked.indices[start:end], self.liked.data[start:end])
        return Scored(result.rows, result.scores, because)

    def fold_in_vector(self, liked_rows: np.ndarray) -> np.ndarray:
        values = np.full(liked_rows.size, self.liked_value, dtype=np.float32)
        return fold_in(
            self.item_factors,
            liked_rows,
            values,
            self.bundle.regularization,
            self.bundle.weighting,
            self.bundle.length_norm,
            gram=self.gram,
        )

    def recommend_liked(self, liked_rows: np.ndarray, k: int, genres: list[str], explain: bool) -> Scored:
        vector = self.fold_in_vector(liked_rows)
        result = self._rank(vector, k, self._blocked(liked_rows), genres)
        if not explain:
            return result
        values = np.full(liked_rows.size, self.liked_value, dtype=np.float32)
        return Scored(result.rows, result.scores, self._explain(result.rows, liked_rows, values))

    def _explain(self, rows: np.ndarray, liked_rows: np.ndarray, values: np.ndarray) -> list[int | None]:
        """For each recommended item, the liked item with the largest share of its ALS score.

        score(u, i) = sum_j c_uj * y_i^T W_u y_j with W_u = (Y^T C_u Y + lambda I)^-1 (Hu, Koren
        and Volinsky 2008), so the j-th term is liked item j's contribution.
        """
        if liked_rows.size == 0 or rows.size == 0:
            return [None] * len(rows)
        confidence = weight_rows(
            np.array([0, liked_rows.size]),
            liked_rows,
            values,
            self.n_items,
            self.bundle.weighting,
            self.bundle.length_norm,
        ).astype(np.float64)
        y_liked = self.item_factors[liked_rows].astype(np.float64)
        factors = self.item_factors.shape[1]
        system = (
            self.gram
            + (y_liked.T * (confidence - 1.0)) @ y_liked
            + self.bundle.regularization * np.eye(factors)
        )
        weighted = np.linalg.solve(system, self.item_factors[rows].astype(np.float64).T).T  # y_i^T W_u
        contributions = (weighted @ y_liked.T) * confidence
        return [int(liked_rows[j]) for j in np.argmax(contributions, axis=1)]

    def popular(self, k: int, genres: list[str], blocked_rows: np.ndarray) -> Scored:
        """Most-rated movies, optionally of any of ``genres``, without the blocked ones."""
        keep = ~self._blocked(blocked_rows)
        allowed = self._allowed_by_genre(genres)
        if allowed is not None:
            keep &= allowed
        ranked = self.popular_rows[keep[self.popular_rows]][:k]
        # A rank-based score keeps the response shape of the other strategies.
        return Scored(ranked, (1.0 / (1.0 + np.arange(len(ranked)))).astype(np.float32))

    def similar(self, item_row: int, k: int) -> Scored:
        cosine = self.unit_factors @ self.unit_factors[item_row]
        cosine[item_row] = -np.inf
        take = min(k, self.n_items - 1)
        if take <= 0:
            return Scored(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        top = np.argpartition(-cosine, take - 1)[:take]
        top = top[np.argsort(-cosine[top], kind="stable")]
        return Scored(top, cosine[top])


def limit_threads() -> None:
    """One OpenMP thread per FAISS search: under a web server, threads only add latency."""
    faiss.omp_set_num_threads(1)
