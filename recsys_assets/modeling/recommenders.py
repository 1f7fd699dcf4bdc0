"""Recommenders sharing one interface: fit on users x items, score a batch of users densely.

ALS (implicit, CPU unless the GPU is asked for), most-popular, item-kNN (implicit's BM25
recommender) and EASE (Steck 2019, closed form). ALS, item-kNN and EASE can each be served: the
item-item ones through :class:`SparseItemItem`, the form a bundle holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

# implicit.als.AlternatingLeastSquares silently picks the GPU model when CUDA exists; the CPU class
# is named explicitly. Imported here, before any BLAS limit is set, so threadpool_limits sees (and
# limits) every BLAS library implicit loads.
from implicit.cpu.als import AlternatingLeastSquares as CpuAlternatingLeastSquares
from implicit.nearest_neighbours import ItemItemRecommender, bm25_weight
from threadpoolctl import threadpool_limits

from recsys_serving.confidence import Weighting, confidence_matrix, item_length_norm

log = logging.getLogger(__name__)


class Scorer(Protocol):
    name: str

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense float32 scores [len(users), n_items]; higher is better."""
        ...


class Recommender(Scorer, Protocol):
    def fit(self, user_items: sp.csr_matrix) -> None: ...


class MostPopular:
    name = "most_popular"

    def fit(self, user_items: sp.csr_matrix) -> None:
        self.counts = np.asarray((user_items > 0).sum(axis=0), dtype=np.float32).ravel()

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


class ItemKNN:
    """implicit's BM25-weighted item-item nearest neighbours."""

    name = "item_knn"

    def __init__(self, neighbours: int = 100, k1: float = 1.2, b: float = 0.75):
        self.neighbours, self.k1, self.b = neighbours, k1, b

    def fit(self, user_items: sp.csr_matrix) -> None:
        # BM25Recommender.fit, but handing implicit the CSR it expects instead of a COO matrix.
        weighted = bm25_weight(user_items.T.astype(np.float32), self.k1, self.b).T.tocsr()
        model = ItemItemRecommender(K=self.neighbours, num_threads=0)
        model.fit(weighted, show_progress=False)
        self.similarity = model.similarity.tocsr()

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray((user_items[users] @ self.similarity).todense(), dtype=np.float32)


class EASE:
    """Embarrassingly Shallow Autoencoder: B = I - P / diag(P), P = (X^T X + l2 I)^-1."""

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 15_000):
        self.l2, self.max_items = l2, max_items

    def too_large(self, n_items: int) -> str | None:
        if n_items > self.max_items:
            return (
                f"EASE skipped: {n_items:,} items exceed the cap of {self.max_items:,} "
                f"(a dense {n_items:,}^2 inverse); raise ease_max_items to run it"
            )
        return None

    def fit(self, user_items: sp.csr_matrix) -> None:
        binary = (user_items > 0).astype(np.float64)
        gram = (binary.T @ binary).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        self.weights = weights.astype(np.float32)

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray((user_items[users] > 0).astype(np.float32) @ self.weights)

    def pruned(self, neighbours: int) -> sp.csr_matrix:
        """The weights with each row cut to its ``neighbours`` largest entries by magnitude: a
        sparse matrix a bundle can hold and a server can multiply. Negative weights are kept when
        they are strong (they push items down); the NDCG this costs is in the test table
        (``ease`` against ``ease_full``)."""
        return top_per_row(self.weights, neighbours)


def top_per_row(dense: np.ndarray, keep: int) -> sp.csr_matrix:
    """A CSR matrix with each row's ``keep`` entries of ``dense`` largest in magnitude."""
    n_rows, n_cols = dense.shape
    keep = min(keep, n_cols)
    columns = np.argpartition(-np.abs(dense), keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(dense, columns, axis=1)
    rows = np.repeat(np.arange(n_rows), keep)
    matrix = sp.csr_matrix((values.ravel(), (rows, columns.ravel())), shape=dense.shape, dtype=np.float32)
    matrix.eliminate_zeros()
    return matrix


class SparseItemItem:
    """An item-item model as served: scores = (user's liked row, binarised for EASE) @ S."""

    def __init__(self, name: str, similarity: sp.csr_matrix, binary_input: bool):
        self.name, self.similarity, self.binary_input = name, similarity.tocsr(), binary_input

    def fit(self, user_items: sp.csr_matrix) -> None:
        """Already fitted: S comes from an EASE or item-kNN fit."""

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        inputs = user_items[users].astype(np.float32)
        if self.binary_input:
            inputs.data[:] = 1.0
        return (inputs @ self.similarity).toarray()


@dataclass(frozen=True)
class ALSParams:
    """ALS as trained when the search is off (the pipeline's defaults: ``als_model`` config takes
    its defaults from here)."""

    # Strong regularisation and confidence (Rendle et al. 2022; Hu et al. used alpha 40): on the
    # 25M-rating synthetic split this point scored validation NDCG@10 0.043 against 0.017 for
    # regularization 0.1 and alpha 4, and on ml-latest-small 0.065 against 0.059.
    factors: int = 64
    regularization: float = 30.0
    iterations: int = 15
    weighting: Weighting = field(default_factory=lambda: Weighting(scheme="log", alpha=20.0, epsilon=1.0))
    seed: int = 42
    use_gpu: bool = False

    def flat(self) -> dict:
        """Flat parameter dict for MLflow and metadata."""
        values = asdict(self)
        weighting = values.pop("weighting")
        return {**values, **{f"weighting_{k}": v for k, v in weighting.items()}}


IterationCallback = Callable[[int, float, float | None], None]


class ALS:
    name = "als"

    def __init__(self, params: ALSParams, on_iteration: IterationCallback | None = None):
        self.params = params
        self.on_iteration = on_iteration

    def _model(self):
        p = self.params
        kwargs = dict(
            factors=p.factors,
            regularization=p.regularization,
            alpha=1.0,  # confidence is applied by our weighting, identically at fold-in time
            iterations=p.iterations,
            # the loss costs a pass over the data each iteration; only progress reports show it
            calculate_training_loss=self.on_iteration is not None,
            random_state=p.seed,
        )
        if p.use_gpu:
            import implicit.gpu

            if not implicit.gpu.HAS_CUDA:
                raise RuntimeError(
                    "use_gpu is true but implicit cannot use CUDA here: no GPU is visible, or rmm is "
                    "missing (pip install 'movielens-recsys[gpu]', pinned for CUDA 13); set use_gpu "
                    "to false to train on the CPU"
                )
            from implicit.gpu.als import AlternatingLeastSquares

            return AlternatingLeastSquares(**kwargs)
        return CpuAlternatingLeastSquares(**kwargs, num_threads=0)

    def fit(
        self,
        user_items: sp.csr_matrix,
        start: tuple[np.ndarray, np.ndarray] | None = None,
        iterations: int | None = None,
    ) -> None:
        """``start``: (user, item) factors to continue from instead of a random start (rows
        aligned with ``user_items``), for ``iterations`` (default: the configured number)."""
        for _ in self.fit_in_stages(user_items, [iterations or self.params.iterations], start):
            pass

    def fit_in_stages(
        self,
        user_items: sp.csr_matrix,
        checkpoints: list[int],
        start: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Iterator[int]:
        """Fit, stopping at each checkpoint (cumulative iterations) with the factors so far set:
        the tuner scores a trial part-way and stops a hopeless one early. implicit continues
        from the factors it already holds, so the stages add up to one uninterrupted fit."""
        weighting = self.params.weighting
        self.length_norm = item_length_norm(user_items, weighting) if weighting.scheme == "bm25" else None
        confidence = confidence_matrix(user_items, weighting, self.length_norm)
        started = time.perf_counter()
        # implicit warns about OpenBLAS threads when a model is made outside the limit fit runs in
        with threadpool_limits(1, "blas"):
            model = self._model()
        if start is not None:
            # Honoured on the GPU as well: the search's trials and the final refit continue from
            # factors, and ignoring them there would leave a few iterations from a random start.
            factors = [np.array(f, dtype=np.float32, order="C") for f in start]
            if self.params.use_gpu:
                import implicit.gpu

                factors = [implicit.gpu.Matrix(f) for f in factors]
            model.user_factors, model.item_factors = factors
        done = 0
        for checkpoint in checkpoints:

            def callback(iteration: int, elapsed: float, loss: float | None, offset: int = done) -> None:
                if self.on_iteration:
                    self.on_iteration(offset + iteration, time.perf_counter() - started, loss)

            model.iterations = checkpoint - done
            # OpenBLAS threads fight implicit's own threads and make ALS many times slower.
            with threadpool_limits(1, "blas"):
                model.fit(confidence, show_progress=False, callback=callback)
            done = checkpoint
            fitted = model.to_cpu() if self.params.use_gpu else model
            self.user_factors = np.ascontiguousarray(fitted.user_factors, dtype=np.float32)
            self.item_factors = np.ascontiguousarray(fitted.item_factors, dtype=np.float32)
            yield done

    def user_factors_for(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Every user's factors solved exactly from their interactions with the fitted item factors
        (one ALS user step), e.g. from a longer history than the fit saw."""
        confidence = confidence_matrix(user_items, self.params.weighting, self.length_norm)
        return solve_users(self.item_factors, confidence, self.params.regularization)

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


def solve_users(item_factors: np.ndarray, confidence: sp.csr_matrix, regularization: float) -> np.ndarray:
    """Each row's ALS user factors given item factors: the least-squares step implicit itself takes
    (and ``recsys_serving.confidence.fold_in`` takes for one user), batched in implicit's C++."""
    with threadpool_limits(1, "blas"):
        model = CpuAlternatingLeastSquares(
            factors=item_factors.shape[1], regularization=regularization, alpha=1.0, num_threads=0
        )
        model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        users = np.arange(confidence.shape[0])
        solved = model.recalculate_user(users, confidence.tocsr().astype(np.float32))
    return np.ascontiguousarray(solved, dtype=np.float32)
