"""The kinds of model a bundle can serve, behind one interface the engine calls.

- ``als``: user and item factors; a known user's scores are ``x_u . y_i``, found through the FAISS
  index; a new user's factors are solved from liked movies (fold-in); similar movies are the
  nearest item factors by cosine.
- ``ease`` and ``item_knn``: a sparse item-item matrix ``S`` (each item's strongest neighbours);
  a user's scores are ``x_u S`` for their liked movies ``x_u`` (binary for EASE, the interaction
  weights for item-kNN), the same for a new user's liked movies; similar movies are the item's row
  of ``S``; the explanation of an item is the liked movie with the largest term ``x_uj S_ji``.

Every ranking is exact and deterministic: highest score first, ties broken by the lower item row.
numpy, scipy, FAISS, and the compiled scan of :mod:`.search`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np
import scipy.sparse as sp

from .confidence import FoldedUser, UserSolver, Weighting
from .search import NO_ROWS, NormOrderedScan

KINDS = ("als", "ease", "item_knn")
ITEM_ITEM_KINDS = ("ease", "item_knn")


@dataclass(frozen=True)
class Scored:
    rows: np.ndarray  # item rows, best first
    scores: np.ndarray
    because: list[int | None] | None = None  # item row of the liked movie that contributed most


EMPTY = Scored(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest finite ``scores``, best first, ties to the lower row.

    A partition finds the k-th value, so only the items above it and the tied ones are sorted.
    """
    if k == 1 and scores.size:  # one pass: argmax takes the first (lowest) row of the maximum
        best = int(np.argmax(scores))
        return np.array([best] if np.isfinite(scores[best]) else [], dtype=np.int64)
    finite = int(np.isfinite(scores).sum()) if np.isneginf(scores).any() else scores.size
    k = min(k, finite)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)[: k - above.size]
    chosen = np.concatenate([above, ties])
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def best_rows_each(scores: np.ndarray, k: int) -> np.ndarray:
    """``best_rows`` for every row of a 2-D score block at once: [n, k] columns, -1 where a row has
    fewer than k finite scores.

    FAISS's k-heaps select the k best of every row in one pass over the block (threads over rows;
    about 8x faster than a numpy argpartition per row at 60k columns); they are then ordered by
    score, ties to the lower column. A row whose k-th value is tied with columns outside the
    selection (rare with float scores), or that has fewer than k finite scores, is redone with
    ``best_rows``, so the answer is exact either way.
    """
    n, width = scores.shape
    k = min(k, width)
    out = np.full((n, k), -1, dtype=np.int64)
    if k == 0 or n == 0:
        return out
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    values = np.empty((n, k), dtype=np.float32)
    part = np.empty((n, k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()  # a min-heap per row keeps the row's k largest
    heaps.nh, heaps.k = n, k
    heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(part)
    heaps.heapify()
    heaps.addn(width, faiss.swig_ptr(scores), 0, 0, n)  # type: ignore[call-arg]  # stubs lag SWIG
    by_column = np.argsort(part, axis=1)  # so the stable sort below breaks ties to the lower column
    part, values = np.take_along_axis(part, by_column, axis=1), np.take_along_axis(values, by_column, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    best_values = np.take_along_axis(values, order, axis=1)
    kth = best_values[:, -1:]
    redo = (scores == kth).sum(axis=1) != (best_values == kth).sum(axis=1)
    redo |= (best[:, -1] < 0) | np.isneginf(kth[:, 0])
    out[~redo] = best[~redo]
    for row in np.flatnonzero(redo):
        found = best_rows(scores[row], k)
        out[row, : found.size] = found
    return out


def exact(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Scored:
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    rows = best_rows(scores, k)
    return Scored(rows, scores[rows].astype(np.float32))


class UserScores(Protocol):
    def user_scores(self, start: int, stop: int) -> np.ndarray:
        """Dense scores of users ``start:stop`` against every item the scorer covers."""
        ...


class Model(Protocol):
    kind: str

    def user_scores(self, start: int, stop: int) -> np.ndarray:
        """Dense float32 scores of users ``start:stop`` (bundle rows) for every item."""
        ...

    def rank_user(self, user_row: int, k: int, allowed: np.ndarray) -> Scored: ...

    def rank_liked(
        self, liked_rows: np.ndarray, values: np.ndarray, k: int, allowed: np.ndarray
    ) -> Scored: ...

    def explain(
        self, rows: np.ndarray, liked_rows: np.ndarray, values: np.ndarray, folded: FoldedUser | None = None
    ) -> list[int | None]:
        """For each of ``rows``, the liked item that contributed most to its score (``folded``:
        the user's fold-in, when the model made one)."""
        ...

    def similar(self, item_row: int, k: int) -> Scored: ...


class FactorModel:
    """ALS factors, ranked through the bundle's FAISS index."""

    kind = "als"

    def __init__(
        self,
        item_ids: np.ndarray,
        item_factors: np.ndarray,
        user_factors: np.ndarray,
        index: faiss.Index,
        weighting: Weighting,
        regularization: float,
        length_norm: np.ndarray | None,
    ):
        self.item_ids = item_ids
        self.n_items = len(item_ids)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        norms = np.linalg.norm(self.item_factors.astype(np.float64), axis=1)
        self.scan = NormOrderedScan(self.item_factors)
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.weighting, self.regularization, self.length_norm = weighting, regularization, length_norm
        self.search_index, self.row_labels, self.search_parameters = searchable(index, item_ids)
        inner = self.search_index
        if isinstance(inner, faiss.IndexIDMap):
            inner = faiss.downcast_index(inner.index)
        # Behind a flat index the compiled pruned scan gives FAISS's exact answer without scoring
        # every item (FAISS with an ID filter: 0.77 ms per query at 60k items x 32 factors).
        # Approximate indexes are searched: they exist to avoid the full scan.
        self.scan_exactly = isinstance(inner, faiss.IndexFlat)
        self.label_space = int(item_ids.max()) + 1 if self.n_items else 0
        self.users = UserSolver.of(self.item_factors, regularization, weighting, length_norm)
        self.unit_factors = np.divide(
            self.item_factors,
            norms[:, None].astype(np.float32),
            out=np.zeros_like(self.item_factors),
            where=norms[:, None] > 0,
        )

    def user_scores(self, start: int, stop: int) -> np.ndarray:
        return self.user_factors[start:stop] @ self.item_factors.T

    def rank_user(self, user_row: int, k: int, allowed: np.ndarray) -> Scored:
        return self.rank_vector(self.user_factors[user_row], k, allowed)

    def fold(self, liked_rows: np.ndarray, values: np.ndarray) -> FoldedUser:
        """A new user's factors, solved from the movies they like (fold-in)."""
        return self.users.fold(liked_rows, values)

    def rank_liked(self, liked_rows: np.ndarray, values: np.ndarray, k: int, allowed: np.ndarray) -> Scored:
        return self.rank_vector(self.fold(liked_rows, values).vector, k, allowed)

    def rank_vector(
        self, vector: np.ndarray, k: int, allowed: np.ndarray | None, blocked: np.ndarray = NO_ROWS
    ) -> Scored:
        """The k best items by inner product among the ``allowed`` (a mask; None: all) but the
        ``blocked`` rows: an exact scan behind a flat index (:mod:`.search`), else
        the index asked for allowed items only.

        The filter travels into an approximate search as a bitmap selector, so a user's seen items
        (which ALS scores highest) cost nothing instead of having to be over-fetched and dropped.
        """
        if self.scan_exactly:
            return Scored(*self.scan.top_k(vector, k, allowed, blocked))
        if blocked.size:  # the caller's mask stays as it was
            allowed = np.ones(self.n_items, dtype=bool) if allowed is None else allowed.copy()
            allowed[blocked] = False
        elif allowed is None:
            allowed = np.ones(self.n_items, dtype=bool)
        take = min(k, int(allowed.sum()))
        if take == 0:
            return EMPTY
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
            return exact(self.item_factors @ vector, take, allowed)
        rows = labels if self.row_labels else lookup(self.item_ids, labels)
        return Scored(rows, scores)

    def explain(
        self, rows: np.ndarray, liked_rows: np.ndarray, values: np.ndarray, folded: FoldedUser | None = None
    ) -> list[int | None]:
        """For each recommended item, the liked item with the largest share of its ALS score
        (:meth:`.confidence.UserSolver.largest_contributions`)."""
        if liked_rows.size == 0 or rows.size == 0:
            return [None] * len(rows)
        largest = self.users.largest_contributions(rows, liked_rows, values, folded)
        return [int(liked_rows[j]) for j in largest]

    def similar(self, item_row: int, k: int) -> Scored:
        cosine = self.unit_factors @ self.unit_factors[item_row]
        cosine[item_row] = -np.inf
        return exact(cosine, k)

    def similar_lists(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Every item's ``n`` most similar items as :meth:`similar` ranks them, in item blocks."""
        return nearest_rows(self.unit_factors, 0, n)


class ItemItemModel:
    """EASE or item-kNN: scores are a user's liked movies times the sparse item-item matrix."""

    def __init__(self, kind: str, similarity: sp.csr_matrix, liked: sp.csr_matrix, binary_input: bool):
        if kind not in ITEM_ITEM_KINDS:
            raise ValueError(f"{kind!r} is not an item-item kind ({', '.join(ITEM_ITEM_KINDS)})")
        self.kind, self.binary_input = kind, binary_input
        self.similarity = similarity.tocsr().astype(np.float32)
        self.n_items = self.similarity.shape[0]
        self.inputs = liked.tocsr().astype(np.float32, copy=True)
        if binary_input:
            self.inputs.data[:] = 1.0

    def input_values(self, values: np.ndarray) -> np.ndarray:
        return np.ones_like(values, dtype=np.float32) if self.binary_input else values.astype(np.float32)

    def scores_of(self, inputs: sp.csr_matrix) -> np.ndarray:
        """Dense scores for the rows of a users x items input matrix (weights; binarised for EASE)."""
        inputs = inputs.astype(np.float32, copy=True)
        if self.binary_input:
            inputs.data[:] = 1.0
        return np.asarray((inputs @ self.similarity).toarray())

    def user_scores(self, start: int, stop: int) -> np.ndarray:
        return np.asarray((self.inputs[start:stop] @ self.similarity).toarray())

    def _liked_scores(self, liked_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        if liked_rows.size == 0:
            return np.zeros(self.n_items, dtype=np.float32)
        # A weighted sum of the liked movies' rows of S: one small sparse product.
        block = self.similarity[liked_rows]
        return np.asarray(block.T @ values.astype(np.float32)).ravel().astype(np.float32, copy=False)

    def rank_user(self, user_row: int, k: int, allowed: np.ndarray) -> Scored:
        start, end = self.inputs.indptr[user_row], self.inputs.indptr[user_row + 1]
        scores = self._liked_scores(self.inputs.indices[start:end], self.inputs.data[start:end])
        return exact(scores, k, allowed)

    def rank_liked(self, liked_rows: np.ndarray, values: np.ndarray, k: int, allowed: np.ndarray) -> Scored:
        return exact(self._liked_scores(liked_rows, self.input_values(values)), k, allowed)

    def explain(
        self, rows: np.ndarray, liked_rows: np.ndarray, values: np.ndarray, folded: FoldedUser | None = None
    ) -> list[int | None]:
        """For each recommended item i, the liked movie j with the largest term x_uj * S[j, i]."""
        if liked_rows.size == 0 or rows.size == 0:
            return [None] * len(rows)
        terms = self.similarity[liked_rows][:, rows].toarray() * self.input_values(values)[:, None]
        return [int(liked_rows[j]) for j in np.argmax(terms, axis=0)]

    def similar(self, item_row: int, k: int) -> Scored:
        start, end = self.similarity.indptr[item_row], self.similarity.indptr[item_row + 1]
        row = np.zeros(self.n_items, dtype=np.float32)
        row[self.similarity.indices[start:end]] = self.similarity.data[start:end]
        row[item_row] = -np.inf
        return exact(row, k)


class ColdScorer:
    """A model's scores for items it was not trained on ("cold"): estimated ALS factors times the
    user's factors, or the user's input row times estimated similarity columns."""

    def __init__(self, model: Model, factors: np.ndarray | None, similarity: sp.csr_matrix | None):
        self.model = model
        self.factors = None if factors is None else np.ascontiguousarray(factors, dtype=np.float32)
        self.similarity = None if similarity is None else similarity.tocsr().astype(np.float32)
        if isinstance(model, FactorModel) == (self.factors is None):
            raise ValueError("cold items need estimated factors for ALS, estimated similarity otherwise")

    def user_scores(self, start: int, stop: int) -> np.ndarray:
        if isinstance(self.model, FactorModel) and self.factors is not None:
            block: np.ndarray = self.model.user_factors[start:stop] @ self.factors.T
            return block
        assert isinstance(self.model, ItemItemModel) and self.similarity is not None
        return np.asarray((self.model.inputs[start:stop] @ self.similarity).toarray())

    def liked_scores(self, liked_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Item-item kinds: scores for a user given as liked rows and their input values."""
        assert isinstance(self.model, ItemItemModel) and self.similarity is not None
        if liked_rows.size == 0:
            return np.zeros(self.similarity.shape[1], dtype=np.float32)
        block = self.similarity[liked_rows]
        inputs = self.model.input_values(values)
        return np.asarray(block.T @ inputs).ravel().astype(np.float32, copy=False)


def lookup(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row of each value in the sorted ``ids``, -1 where absent."""
    values = np.asarray(values, dtype=np.int64)
    position = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return np.where(ids[position] == values, position, -1)


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
    # faiss's bundled type stubs lag its SWIG API (keyword parameters, SearchParametersHNSW).
    if isinstance(inner, faiss.IndexIVF):
        nprobe = inner.nprobe
        return index, row_labels, lambda sel: faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # type: ignore[call-arg]
    if isinstance(inner, faiss.IndexHNSW):
        ef = inner.hnsw.efSearch
        return index, row_labels, lambda sel: faiss.SearchParametersHNSW(sel=sel, efSearch=ef)  # type: ignore[attr-defined]
    return index, row_labels, lambda sel: faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]


def content_neighbours(content: np.ndarray, n_items: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cold movie's ``n`` nearest catalogue movies by content (catalogue rows; the cold movie
    at catalogue row ``n_items + j`` is row j of the result), itself excluded, as
    :meth:`recsys_serving.cold.ColdCatalogue.similar` ranks them."""
    return nearest_rows(np.ascontiguousarray(content, dtype=np.float32), n_items, n)


def nearest_rows(vectors: np.ndarray, first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``vectors[first:]``, the ``n`` rows of ``vectors`` with the largest inner product
    (cosine for unit vectors), itself excluded, best first, ties to the lower row; computed in
    blocks by :func:`top_unseen` (the rows in the place of users, each having "seen" itself)."""
    queries = vectors.shape[0] - first
    itself = sp.csr_matrix(
        (np.ones(queries, dtype=np.float32), first + np.arange(queries), np.arange(queries + 1)),
        shape=(queries, vectors.shape[0]),
    )
    return top_unseen(_RowProducts(vectors, first), queries, vectors.shape[0], itself, n)


class _RowProducts:
    """Rows ``first + start .. first + stop`` of ``vectors`` against every row (for
    :func:`top_unseen`)."""

    def __init__(self, vectors: np.ndarray, first: int):
        self.vectors, self.first = vectors, first

    def user_scores(self, start: int, stop: int) -> np.ndarray:
        scores: np.ndarray = self.vectors[self.first + start : self.first + stop] @ self.vectors.T
        return scores


def explained_lists(model: Model, top_rows: np.ndarray, liked: sp.csr_matrix) -> np.ndarray:
    """Each user's precomputed list explained as ``explain=true`` explains it per request (the
    model's own ``explain`` on the user's liked row): the liked item row behind each entry, -1
    past the end of the list or for a user without liked items."""
    because = np.full(top_rows.shape, -1, dtype=np.int32)
    for user, rows in enumerate(top_rows):
        listed = rows[rows >= 0]
        start, end = liked.indptr[user], liked.indptr[user + 1]
        if listed.size and end > start:
            found = model.explain(listed, liked.indices[start:end], liked.data[start:end])
            because[user, : listed.size] = [-1 if j is None else j for j in found]
    return because


def top_unseen(
    model: UserScores, n_users: int, n_items: int, seen: sp.csr_matrix, n: int, chunk_users: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``n`` highest-scoring unseen items by the model's exact scores, best first.

    Rows past a user's unseen items are -1 (score -inf). Users are scored in chunks, so memory
    stays at ``chunk_users`` x items floats whatever the number of users.
    """
    n = min(n, n_items)
    rows = np.full((n_users, n), -1, dtype=np.int32)
    scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    if n == 0:
        return rows, scores
    seen = seen.tocsr()
    for start in range(0, n_users, chunk_users):
        stop = min(start + chunk_users, n_users)
        block = np.array(model.user_scores(start, stop), dtype=np.float32)
        part = seen[start:stop]
        block[np.repeat(np.arange(stop - start), np.diff(part.indptr)), part.indices] = -np.inf
        best = best_rows_each(block, n)
        rows[start:stop] = best
        scores[start:stop] = np.where(
            best >= 0, np.take_along_axis(block, np.maximum(best, 0), axis=1), -np.inf
        )
    return rows, scores
