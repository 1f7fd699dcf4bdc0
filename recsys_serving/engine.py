"""Recommendations from one loaded bundle, whatever kind of model it holds.

Everything per request is a few numpy/FAISS/scipy operations on arrays prepared once at load
time: no DataFrame, no file access, no Python loop over the catalogue. The engine owns what every
kind shares (ids, catalogue, filters, the precomputed lists, popularity); the bundle's model
(:mod:`.models`) scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from .bundle import Bundle, popularity_order
from .cold import ColdCatalogue, merge
from .confidence import FoldedUser, UserSolver, Weighting
from .models import FactorModel, Scored, lookup
from .new_users import NewUserLists
from .search import NO_FILTER, NormOrderedScan
from .search import NO_ROWS as NO_ROWS  # routes and tests take it from here


@dataclass(frozen=True)
class LikedQuery:
    """A cold start, ready to rank: the liked movies, what may be returned, and for ALS the
    folded-in user vector."""

    known_rows: np.ndarray  # catalogue rows of the liked movies the bundle knows (cold ones too)
    liked_rows: np.ndarray  # those the model scores from
    values: np.ndarray  # their interaction weights
    k: int
    genres: list[str]
    allowed: np.ndarray | None  # the model's items of the asked genres, liked ones left out (None: no genres)
    folded: FoldedUser | None  # ALS only

    @property
    def vector(self) -> np.ndarray | None:
        return None if self.folded is None else self.folded.vector


class Engine:
    def __init__(self, bundle: Bundle, use_precomputed: bool = True, cold_slots: int = 0):
        self.bundle = bundle
        self.version = bundle.version
        self.kind = bundle.kind
        self.model = bundle.model()
        self.item_ids = bundle.item_ids
        self.user_ids = bundle.user_ids
        self.n_items = len(self.item_ids)
        # Dicts for single ids: a numpy search per request costs more in conversions than it finds.
        self._item_rows = {m: row for row, m in enumerate(self.item_ids.tolist())}
        self._user_rows = {u: row for row, u in enumerate(self.user_ids.tolist())}
        self.seen = bundle.seen
        self.liked = bundle.liked
        self.top_rows = bundle.top_rows if use_precomputed else None
        self.top_scores = bundle.top_scores if use_precomputed else None
        self.top_because = bundle.top_because if use_precomputed else None
        self.similar_rows = bundle.similar_rows if use_precomputed else None
        self.similar_scores = bundle.similar_scores if use_precomputed else None

        # The catalogue: the model's items (rows 0..n_items-1), then the cold ones the bundle has.
        self.cold = (
            None
            if bundle.cold is None
            else ColdCatalogue(bundle.cold, self.model, self.n_items, use_precomputed)
        )
        self.cold_slots = cold_slots if self.cold is not None else 0
        catalogue_ids = (
            self.item_ids if bundle.cold is None else np.concatenate([self.item_ids, bundle.cold.movie_ids])
        )
        self._catalogue_rows = {m: row for row, m in enumerate(catalogue_ids.tolist())}
        movies = {row["movie_id"]: row for row in bundle.movies.to_dicts()}
        self.titles = [movies.get(int(m), {}).get("title") or f"movie {m}" for m in catalogue_ids]
        self.years = [movies.get(int(m), {}).get("year") for m in catalogue_ids]
        self.genres = [list(movies.get(int(m), {}).get("genres") or []) for m in catalogue_ids]
        # Each movie's response fields, built once: a response only adds rank and score.
        self.movie_fields = [
            {"movieId": int(m), "title": t, "year": y, "genres": g}
            for m, t, y, g in zip(catalogue_ids, self.titles, self.years, self.genres, strict=True)
        ]
        for fields in self.movie_fields[self.n_items :]:
            fields["content_scored"] = True
        self.genre_names = sorted({g for gs in self.genres for g in gs})
        self.genre_masks = {g: np.zeros(len(catalogue_ids), dtype=bool) for g in self.genre_names}
        for row, names in enumerate(self.genres):
            for g in names:
                self.genre_masks[g][row] = True
        # The full ranking by number of raters (popularity.json holds its head for other readers).
        self.popular_rows = popularity_order(self.seen)
        # A rank-based score keeps the popularity fallback in the response shape of the others.
        self.rank_scores = (1.0 / (1.0 + np.arange(self.n_items))).astype(np.float32)
        self.liked_value = float(bundle.manifest["fold_in"].get("liked_value", 1.0))
        # ALS behind an exact scan: a new user's list is one compiled call (see .new_users).
        self.new_users = (
            NewUserLists(
                self.model.users,
                self.liked_value,
                self.model.scan,
                None if self.cold is None else self.cold.factor_scan,
                self.n_items,
                self.cold_slots,
            )
            if isinstance(self.model, FactorModel) and self.model.scan_exactly
            else None
        )
        # How each known user is served: by the model that was fitted on them (its kind), folded in
        # from positives the model was not fitted on (users the k-core dropped, users seen only in
        # the test split), or, with no positive at all, popularity without the movies they rated.
        fitted = bundle.fitted_pairs()
        fitted.eliminate_zeros()
        self.user_strategies = (self.kind, "fold_in", "popular_fallback")
        self.user_strategy = np.where(
            np.diff(self.liked.indptr) == 0, 2, np.where(np.diff(fitted.indptr) == 0, 1, 0)
        ).astype(np.int8)

    # ------------------------------------------------------------------ lookups

    lookup = staticmethod(lookup)

    def catalogue_rows(self, movie_ids: list[int]) -> np.ndarray:
        """Catalogue rows of ``movie_ids``, -1 for movies the bundle does not know."""
        return np.array([self._catalogue_rows.get(m, -1) for m in movie_ids], dtype=np.int64)

    def item_row(self, movie_id: int) -> int | None:
        """The model's row of a movie; None for movies it does not score (cold or unknown)."""
        return self._item_rows.get(movie_id)

    def catalogue_row(self, movie_id: int) -> int | None:
        """The catalogue row of any movie the bundle knows, the model's or cold."""
        return self._catalogue_rows.get(movie_id)

    def user_row(self, user_id: int) -> int | None:
        return self._user_rows.get(user_id)

    def unknown_genres(self, genres: list[str]) -> list[str]:
        return [g for g in genres if g not in self.genre_masks]

    # ------------------------------------------------------------------ ranking

    def _of_genres(self, genres: list[str]) -> np.ndarray:
        allowed = np.zeros(len(self.movie_fields), dtype=bool)
        for g in genres:
            allowed |= self.genre_masks[g]
        return allowed

    def _allowed(self, blocked_rows: np.ndarray, genres: list[str]) -> np.ndarray:
        """Items a response may contain: not blocked and, when genres are given, of one of them."""
        allowed = self._of_genres(genres)[: self.n_items] if genres else np.ones(self.n_items, dtype=bool)
        allowed[blocked_rows] = False
        return allowed

    def _cold_allowed(self, blocked_rows: np.ndarray, genres: list[str]) -> np.ndarray:
        """Cold items a response may contain (``blocked_rows`` are cold item positions)."""
        assert self.cold is not None
        allowed = self._of_genres(genres)[self.n_items :] if genres else np.ones(self.cold.n_cold, dtype=bool)
        allowed[blocked_rows] = False
        return allowed

    def _cold_positions(self, catalogue_rows: np.ndarray) -> np.ndarray:
        return catalogue_rows[catalogue_rows >= self.n_items] - self.n_items

    def _precomputed(
        self, user_row: int, k: int, exclude_rows: np.ndarray, genres: list[str], explain: bool
    ) -> Scored | None:
        """The user's list ranked at packaging time, filtered (with its explanations when asked
        and the bundle has them); None when it cannot answer.

        The list is the exact top of the user's unseen items, so its first k allowed entries are
        the answer whenever k of them survive the filters, or when it holds every unseen item
        (it ends in -1) and there are no more to find.
        """
        if self.top_rows is None or self.top_scores is None or k > self.top_rows.shape[1]:
            return None
        rows, scores = self.top_rows[user_row], self.top_scores[user_row]
        because = self.top_because[user_row] if explain and self.top_because is not None else None
        keep = None
        if exclude_rows.size or genres:
            keep = rows >= 0
            if exclude_rows.size:
                keep &= ~np.isin(rows, exclude_rows)
            if genres:
                keep &= self._of_genres(genres)[rows]
            if int(keep.sum()) < k and rows[-1] >= 0:  # too few left, and more exist beyond the list
                return None
        elif rows[-1] < 0:
            keep = rows >= 0
        if keep is not None:
            rows, scores = rows[keep], scores[keep]
            because = None if because is None else because[keep]
        explained = None if because is None else [None if j < 0 else int(j) for j in because[:k]]
        return Scored(rows[:k], scores[:k], explained)

    def seen_rows(self, user_row: int) -> np.ndarray:
        rows: np.ndarray = self.seen.indices[self.seen.indptr[user_row] : self.seen.indptr[user_row + 1]]
        return rows

    def recommend_known(
        self, user_row: int, k: int, exclude_rows: np.ndarray, genres: list[str], explain: bool
    ) -> tuple[Scored, str]:
        """A known user's list and the strategy that made it (see ``user_strategy``); the movies
        they rated are never in it."""
        strategy = self.user_strategies[self.user_strategy[user_row]]
        if strategy == "popular_fallback":
            blocked = np.concatenate([self.seen_rows(user_row), exclude_rows])
            return self.popular(k, genres, blocked), strategy
        return self.recommend_user(user_row, k, exclude_rows, genres, explain), strategy

    def recommend_user(
        self, user_row: int, k: int, exclude_rows: np.ndarray, genres: list[str], explain: bool
    ) -> Scored:
        """``exclude_rows`` are catalogue rows (the model's and cold ones)."""
        warm_excluded = exclude_rows[exclude_rows < self.n_items] if self.cold else exclude_rows
        result = self._precomputed(user_row, k, warm_excluded, genres, explain)
        if result is None:
            allowed = self._allowed(self.seen_rows(user_row), genres)
            allowed[warm_excluded] = False
            result = self.model.rank_user(user_row, k, allowed)
        if explain and result.because is None:
            start, end = self.liked.indptr[user_row], self.liked.indptr[user_row + 1]
            liked = self.liked.indices[start:end], self.liked.data[start:end]
            result = Scored(result.rows, result.scores, self.model.explain(result.rows, *liked))
        if self.cold_slots and self.cold is not None:
            mask = self._of_genres(genres)[self.n_items :] if genres else None
            blocked = self._cold_positions(exclude_rows) if exclude_rows.size else exclude_rows
            result = merge(result, self.cold.for_user(user_row, min(self.cold_slots, k), blocked, mask), k)
        return result

    def recommend_liked(self, known_rows: np.ndarray, k: int, genres: list[str], explain: bool) -> Scored:
        """A new user's list from the movies they like (catalogue rows), scored by the bundle's
        model from the liked movies it was trained on; liked cold movies are only left out."""
        if self.new_users is not None:
            known_rows = np.asarray(known_rows, dtype=np.int64)
            if not genres:
                return self.new_users(known_rows, k, explain=explain)
            liked_rows = known_rows[known_rows < self.n_items]
            cold_allowed = (
                NO_FILTER
                if self.cold is None
                else self._cold_allowed(self._cold_positions(known_rows), genres)
            )
            return self.new_users(known_rows, k, self._allowed(liked_rows, genres), cold_allowed, explain)
        query = self.liked_query(known_rows, k, genres)
        return self.finish_liked(query, self.rank_liked(query), explain)

    def liked_query(self, known_rows: np.ndarray, k: int, genres: list[str]) -> LikedQuery:
        liked_rows = known_rows[known_rows < self.n_items]
        values = np.full(liked_rows.size, self.liked_value, dtype=np.float32)
        # ALS: one folded-in vector ranks the model's items and, with cold slots, the cold ones.
        folded = self.model.fold(liked_rows, values) if isinstance(self.model, FactorModel) else None
        # Without genres no mask over the catalogue is built: the search itself leaves the liked
        # movies out.
        allowed = self._allowed(liked_rows, genres) if genres else None
        return LikedQuery(known_rows, liked_rows, values, k, genres, allowed, folded)

    def rank_liked(self, query: LikedQuery) -> Scored:
        if query.vector is not None and isinstance(self.model, FactorModel):
            # A genre mask already leaves the liked movies out.
            blocked = query.liked_rows if query.allowed is None else NO_ROWS
            return self.model.rank_vector(query.vector, query.k, query.allowed, blocked)
        allowed = self._allowed(query.liked_rows, []) if query.allowed is None else query.allowed
        return self.model.rank_liked(query.liked_rows, query.values, query.k, allowed)

    def finish_liked(self, query: LikedQuery, result: Scored, explain: bool) -> Scored:
        """The ranked list with its explanations and the cold slots."""
        if explain:
            because = self.model.explain(result.rows, query.liked_rows, query.values, query.folded)
            result = Scored(result.rows, result.scores, because)
        if self.cold_slots and self.cold is not None:
            liked_cold = self._cold_positions(query.known_rows)
            # Without a filter every cold movie may be shown: no mask to build.
            cold_allowed = (
                self._cold_allowed(liked_cold, query.genres) if query.genres or liked_cold.size else None
            )
            slots = min(self.cold_slots, query.k)
            if query.vector is not None:
                best = self.cold.best_for_vector(query.vector, slots, cold_allowed)
            else:
                scores = self.cold.scorer.liked_scores(query.liked_rows, query.values)
                best = self.cold.best(scores, slots, cold_allowed)
            result = merge(result, best, query.k)
        return result

    def popular(self, k: int, genres: list[str], blocked_rows: np.ndarray) -> Scored:
        """Most-rated movies, optionally of any of ``genres``, without the blocked ones (catalogue
        rows; cold movies have no ratings to rank them by and are never among them)."""
        blocked_rows = blocked_rows[blocked_rows < self.n_items]
        if genres or blocked_rows.size:
            keep = self._allowed(blocked_rows, genres)
            ranked = self.popular_rows[keep[self.popular_rows]][:k]
        else:
            ranked = self.popular_rows[:k]
        return Scored(ranked, self.rank_scores[: len(ranked)])

    def explore(
        self, scored: Scored, blocked_rows: np.ndarray, epsilon: float, rng: np.random.Generator
    ) -> tuple[Scored, list[float]]:
        """Epsilon-greedy exploration for off-policy evaluation: each place of the list, with
        probability ``epsilon``, goes to a movie drawn uniformly from the model's items that are
        neither blocked (seen, excluded) nor listed. Returns the list and, per place, the
        probability with which its movie was shown there (its propensity)."""
        rows, scores = scored.rows.copy(), scored.scores.copy()
        taken = set(rows.tolist()) | set(blocked_rows.tolist())
        propensities = []
        for place in range(rows.size):
            candidates = self.n_items - len(taken)
            if candidates > 0 and rng.random() < epsilon:
                while (row := int(rng.integers(self.n_items))) in taken:
                    pass
                taken.add(row)
                rows[place], scores[place] = row, 0.0  # shown at random: no model score
                propensities.append(epsilon / candidates)
            else:  # the model's movie: a random draw never repeats a listed one
                propensities.append(1.0 - epsilon)
        return Scored(rows, scores, scored.because), propensities

    def similar(self, catalogue_row: int, k: int) -> tuple[Scored, str]:
        """Movies like this one, and how they were found: the model's item similarity for its own
        items, content similarity (genres, year, tags) for cold ones."""
        if catalogue_row < self.n_items:
            if (
                self.similar_rows is not None
                and self.similar_scores is not None
                and k <= self.similar_rows.shape[1]
            ):
                rows = self.similar_rows[catalogue_row]
                listed = rows[:k] >= 0  # -1 only past the last other item of a tiny catalogue
                return Scored(rows[:k][listed], self.similar_scores[catalogue_row, :k][listed]), self.kind
            return self.model.similar(catalogue_row, k), self.kind
        assert self.cold is not None
        return self.cold.similar(catalogue_row, k), "content"


def compile_kernels() -> None:
    """Compile the request path's numba kernels (or load them from numba's cache: about 25 s
    against 1 s on a 2-CPU machine) before any request needs them, with the argument types
    requests use."""
    factors = np.eye(4, dtype=np.float32)
    distinct, repeated = NormOrderedScan(factors), NormOrderedScan(np.repeat(factors, 2, axis=0))
    for scheme in ("linear", "bm25"):
        users = UserSolver.of(factors, 0.1, Weighting(scheme), np.ones(4, dtype=np.float32))
        liked, values = np.array([0, 1]), np.ones(2, dtype=np.float32)
        folded = users.fold(liked, values)
        for given in (folded, None):
            users.largest_contributions(np.array([2, 3]), liked, values, given)
    # A new user's list: item factors are distinct; cold items, when the bundle has them, often
    # share their content (and so their factors) with another.
    for cold_scan in (None, distinct, repeated):
        NewUserLists(users, 1.0, distinct, cold_scan, len(factors), cold_slots=1)
    twice = UserSolver.of(np.repeat(factors, 2, axis=0), 0.1, Weighting("linear"))
    NewUserLists(twice, 1.0, repeated, None, 2 * len(factors), cold_slots=0)
    rows = np.arange(2, dtype=np.int64)
    merge(Scored(rows, np.ones(2, dtype=np.float32)), Scored(rows + 2, np.ones(2, dtype=np.float32)), 3)


def limit_threads() -> None:
    """One thread per FAISS search and per BLAS product: a request's products are small, and under
    a web server helper threads only add hand-off latency and take cores from other requests
    (numpy's OpenBLAS defaulted to every core: py-spy in benchmarks/serve_bench.py's run showed a
    quarter of the server's time in a 4 x 4096 product)."""
    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")
