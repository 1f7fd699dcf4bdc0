"""Recommendations from one loaded bundle.

Everything per request is a few numpy/FAISS operations on arrays prepared once at load time:
no DataFrame, no file access, no Python loop over the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from .bundle import Bundle
from .confidence import fold_in, weight_rows


@dataclass(frozen=True)
class Scored:
    rows: np.ndarray  # item rows, best first
    scores: np.ndarray
    because: list[int | None] | None = None  # item row of the liked movie that contributed most


class Engine:
    def __init__(self, bundle: Bundle, use_precomputed: bool = True):
        self.bundle = bundle
        self.version = bundle.version
        self.item_ids = bundle.item_ids
        self.user_ids = bundle.user_ids
        self.item_factors = np.ascontiguousarray(bundle.item_factors, dtype=np.float32)
        self.user_factors = np.ascontiguousarray(bundle.user_factors, dtype=np.float32)
        self.n_items = len(self.item_ids)
        # Dicts for single ids: a numpy search per request costs more in conversions than it finds.
        self._item_rows = {m: row for row, m in enumerate(self.item_ids.tolist())}
        self._user_rows = {u: row for row, u in enumerate(self.user_ids.tolist())}
        self.seen = bundle.seen
        self.liked = bundle.liked
        self.index = bundle.index
        self.search_index, self.row_labels, self.search_parameters = searchable(self.index, self.item_ids)
        self.label_space = int(self.item_ids.max()) + 1 if self.n_items else 0
        self.top_rows = bundle.top_rows if use_precomputed else None
        self.top_scores = bundle.top_scores if use_precomputed else None
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
        # A rank-based score keeps the popularity fallback in the response shape of the others.
        self.rank_scores = (1.0 / (1.0 + np.arange(self.n_items))).astype(np.float32)
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
        return self._item_rows.get(movie_id)

    def user_row(self, user_id: int) -> int | None:
        return self._user_rows.get(user_id)

    def unknown_genres(self, genres: list[str]) -> list[str]:
        return [g for g in genres if g not in self.genre_masks]

    # ------------------------------------------------------------------ ranking

    def _of_genres(self, genres: list[str]) -> np.ndarray:
        allowed = np.zeros(self.n_items, dtype=bool)
        for g in genres:
            allowed |= self.genre_masks[g]
        return allowed

    def _allowed(self, blocked_rows: np.ndarray, genres: list[str]) -> np.ndarray:
        """Items a response may contain: not blocked and, when genres are given, of one of them."""
        allowed = self._of_genres(genres) if genres else np.ones(self.n_items, dtype=bool)
        allowed[blocked_rows] = False
        return allowed

    def _precomputed(
        self, user_row: int, k: int, exclude_rows: np.ndarray, genres: list[str]
    ) -> Scored | None:
        """The user's list ranked at packaging time, filtered; None when it cannot answer.

        The list is the exact top of the user's unseen items, so its first k allowed entries are
        the answer whenever k of them survive the filters, or when it holds every unseen item
        (it ends in -1) and there are no more to find.
        """
        if self.top_rows is None or k > self.top_rows.shape[1]:
            return None
        rows, scores = self.top_rows[user_row], self.top_scores[user_row]
        complete = rows[-1] < 0
        if exclude_rows.size or genres:
            keep = rows >= 0
            if exclude_rows.size:
                keep &= ~np.isin(rows, exclude_rows)
            if genres:
                keep &= self._of_genres(genres)[rows]
            rows, scores = rows[keep], scores[keep]
            if rows.size < k and not complete:
                return None
        elif complete:
            scores = scores[rows >= 0]
            rows = rows[rows >= 0]
        return Scored(rows[:k], scores[:k])

    def _rank(self, vector: np.ndarray, k: int, allowed: np.ndarray) -> Scored:
        """The k best allowed items by inner product, asking the index for allowed items only.

        The filter travels into the search as a bitmap selector, so a user's seen items (which
        ALS scores highest) cost nothing instead of having to be over-fetched and dropped.
        """
        take = min(k, int(allowed.sum()))
        if take == 0:
            return Scored(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        if self.row_labels:
            space = allowed
        else:
            space = np.zeros(self.label_space, dtype=bool)
            space[self.item_ids[allowed]] = True
        bits = np.packbits(space, bitorder="little")
        params = self.search_parameters(faiss.IDSelectorBitmap(space.size, faiss.swig_ptr(bits)))
        scores, labels = self.search_index.search(vector[None, :], take, params=params)
        labels, scores = labels[0], scores[0]
        if labels[-1] < 0:
            # An approximate index (IVF probes, HNSW beam) found fewer than k allowed items:
            # rank them exactly, so the response still has k when the catalogue allows.
            return self._exact(vector, take, np.flatnonzero(allowed))
        rows = labels if self.row_labels else self.lookup(self.item_ids, labels)
        return Scored(rows, scores)

    def _exact(self, vector: np.ndarray, k: int, candidates: np.ndarray) -> Scored:
        scores = self.item_factors[candidates] @ vector
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return Scored(candidates[top], scores[top])

    def recommend_user(
        self, user_row: int, k: int, exclude_rows: np.ndarray, genres: list[str], explain: bool
    ) -> Scored:
        result = self._precomputed(user_row, k, exclude_rows, genres)
        if result is None:
            seen = self.seen.indices[self.seen.indptr[user_row] : self.seen.indptr[user_row + 1]]
            allowed = self._allowed(seen, genres)
            allowed[exclude_rows] = False
            result = self._rank(self.user_factors[user_row], k, allowed)
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
        result = self._rank(vector.astype(np.float32), k, self._allowed(liked_rows, genres))
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
        if genres or blocked_rows.size:
            keep = self._allowed(blocked_rows, genres)
            ranked = self.popular_rows[keep[self.popular_rows]][:k]
        else:
            ranked = self.popular_rows[:k]
        return Scored(ranked, self.rank_scores[: len(ranked)])

    def similar(self, item_row: int, k: int) -> Scored:
        cosine = self.unit_factors @ self.unit_factors[item_row]
        cosine[item_row] = -np.inf
        take = min(k, self.n_items - 1)
        if take <= 0:
            return Scored(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        top = np.argpartition(-cosine, take - 1)[:take]
        top = top[np.argsort(-cosine[top], kind="stable")]
        return Scored(top, cosine[top])


def searchable(
    index: faiss.Index, item_ids: np.ndarray
) -> tuple[faiss.Index, bool, Callable[[faiss.IDSelector], faiss.SearchParameters]]:
    """The index to search, whether its labels are item rows, and how to build its parameters.

    A bundle's index labels items by movie id. When it is an id map over rows in item order, the
    inner index is searched instead: its labels are rows, which saves an id lookup per result.
    Search parameters must be the index's own kind, carrying its probe or beam width, or FAISS
    falls back to the defaults (nprobe 1, efSearch 16).
    """
    row_labels = False
    if isinstance(index, faiss.IndexIDMap) and np.array_equal(faiss.vector_to_array(index.id_map), item_ids):
        index, row_labels = faiss.downcast_index(index.index), True
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexIVF):
        nprobe = inner.nprobe
        return index, row_labels, lambda sel: faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        ef = inner.hnsw.efSearch
        return index, row_labels, lambda sel: faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
    return index, row_labels, lambda sel: faiss.SearchParameters(sel=sel)


def limit_threads() -> None:
    """One OpenMP thread per FAISS search: under a web server, threads only add latency."""
    faiss.omp_set_num_threads(1)
