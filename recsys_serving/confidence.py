"""Confidence weighting for implicit ALS, and folding a new user into a trained model.

Shared by training (recsys_assets) and serving, so a cold-start user is weighted and solved for
exactly as training users were. The solve is compiled (numba): it is a cold start's whole
arithmetic, and as a dozen numpy calls on 32 x 32 matrices it cost several times the flops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.sparse as sp

from .compiled import compiled

Scheme = Literal["linear", "log", "bm25"]


@dataclass(frozen=True)
class Weighting:
    """``linear``: c = alpha * w. ``log``: c = alpha * log(1 + w / epsilon) (Hu, Koren, Volinsky).
    ``bm25``: c = alpha * BM25(w), users as terms and items as documents (implicit's convention)."""

    scheme: Scheme = "bm25"
    alpha: float = 1.0
    epsilon: float = 1.0
    bm25_k1: float = 100.0
    bm25_b: float = 0.8

    def __post_init__(self) -> None:
        if self.scheme not in ("linear", "log", "bm25"):
            raise ValueError(f"unknown weighting scheme {self.scheme!r}: use linear, log or bm25")
        if self.alpha <= 0 or self.epsilon <= 0:
            raise ValueError("alpha and epsilon must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_length_norm(user_items: sp.csr_matrix, weighting: Weighting) -> np.ndarray:
    """BM25's per-item length normalisation, computed once on the training matrix."""
    item_sums = np.asarray(user_items.sum(axis=0), dtype=np.float64).ravel()
    mean = item_sums.mean() if item_sums.size and item_sums.mean() > 0 else 1.0
    return ((1.0 - weighting.bm25_b) + weighting.bm25_b * item_sums / mean).astype(np.float32)


def weight_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    n_items: int,
    weighting: Weighting,
    length_norm: np.ndarray | None,
) -> np.ndarray:
    """Confidence values for the non-zeros of a users x items CSR structure."""
    return _confidences(
        np.asarray(indptr),
        np.asarray(indices),
        np.asarray(values, dtype=np.float32),
        int(n_items),
        _kernel_weighting(weighting, length_norm),
    )


# A weighting as the kernels take it: scheme (index in SCHEMES), alpha, epsilon, k1, length norm.
KernelWeighting = tuple[int, float, float, float, np.ndarray]


def _kernel_weighting(weighting: Weighting, length_norm: np.ndarray | None) -> KernelWeighting:
    """The weighting as the kernels take it. Scalars as Python floats and ints (arrays keep their
    integer widths): each new combination of argument types compiles a kernel again."""
    if weighting.scheme == "bm25" and length_norm is None:
        raise ValueError("bm25 weighting needs the items' length normalisation")
    return (
        SCHEMES.index(weighting.scheme),
        float(weighting.alpha),
        float(weighting.epsilon),
        float(weighting.bm25_k1),
        NO_NORM if length_norm is None else np.asarray(length_norm, dtype=np.float32),
    )


SCHEMES = ("linear", "log", "bm25")
NO_NORM = np.ones(0, dtype=np.float32)


@compiled
def _confidences(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    n_items: int,
    weighting: KernelWeighting,
) -> np.ndarray:
    scheme, alpha, epsilon, k1, length_norm = weighting
    out = np.empty(values.size, dtype=np.float32)
    log_items = math.log(max(n_items, 1))
    for user in range(indptr.size - 1):
        start, stop = indptr[user], indptr[user + 1]
        idf = log_items - math.log1p(stop - start)  # bm25: users as terms, items as documents
        for at in range(start, stop):
            value = float(values[at])
            if scheme == 0:
                weight = alpha * value
            elif scheme == 1:
                weight = alpha * math.log1p(value / epsilon)
            else:
                weight = (
                    alpha * value * (k1 + 1.0) / (k1 * np.float64(length_norm[indices[at]]) + value) * idf
                )
            # A confidence must stay positive for the solver; BM25's idf can reach zero for very
            # heavy users.
            out[at] = max(weight, 1e-6)
    return out


def confidence_matrix(
    user_items: sp.csr_matrix, weighting: Weighting, length_norm: np.ndarray | None = None
) -> sp.csr_matrix:
    matrix = user_items.tocsr().astype(np.float32)
    if weighting.scheme == "bm25" and length_norm is None:
        length_norm = item_length_norm(matrix, weighting)
    data = weight_rows(matrix.indptr, matrix.indices, matrix.data, matrix.shape[1], weighting, length_norm)
    return sp.csr_matrix((data, matrix.indices, matrix.indptr), shape=matrix.shape)


def fold_in(
    item_factors: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    regularization: float,
    weighting: Weighting,
    length_norm: np.ndarray | None = None,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Solve one user's ALS factors from liked items (the implicit-feedback least-squares step).

    x_u = (Y^T Y + Y^T (C_u - I) Y + lambda I)^-1 Y^T C_u p_u, with C_u from the same weighting
    as training. ``gram`` (Y^T Y, float64) can be passed in precomputed.
    """
    return UserSolver.of(item_factors, regularization, weighting, length_norm, gram).vector(items, values)


@dataclass(frozen=True)
class UserSolver:
    """Folds users into trained item factors; what every user shares is prepared once, and each
    user is one kernel call (the weights, the normal equations, the Cholesky solve)."""

    item_factors: np.ndarray
    weighting: KernelWeighting
    gram: np.ndarray  # Y^T Y, float64
    regularization: float

    @classmethod
    def of(
        cls,
        item_factors: np.ndarray,
        regularization: float,
        weighting: Weighting,
        length_norm: np.ndarray | None = None,
        gram: np.ndarray | None = None,
    ) -> UserSolver:
        if gram is None:
            factors64 = item_factors.astype(np.float64)
            gram = factors64.T @ factors64
        return cls(item_factors, _kernel_weighting(weighting, length_norm), gram, float(regularization))

    def vector(self, items: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The user's factors (float32) from their liked ``items`` and interaction ``values``."""
        return self.fold(items, values).vector

    def fold(self, items: np.ndarray, values: np.ndarray) -> FoldedUser:
        """The user's factors, with the factorised equations an explanation reuses."""
        items = np.asarray(items, dtype=np.int64)
        if items.size == 0:
            return FoldedUser(np.zeros(self.item_factors.shape[1], dtype=np.float32))
        return FoldedUser(*fold_user(self._user(items, values)))

    def largest_contributions(
        self, rows: np.ndarray, items: np.ndarray, values: np.ndarray, folded: FoldedUser | None = None
    ) -> np.ndarray:
        """For each of ``rows``, the position in ``items`` (the liked ones) of the largest term of
        its folded-in score: score(u, i) = sum_j c_uj * y_i^T W_u y_j with
        W_u = (Y^T C_u Y + lambda I)^-1 (Hu, Koren and Volinsky 2008). Ties go to the first liked
        item. ``folded``: :meth:`fold` of the same items and values, whose factorisation of
        W_u^-1 is then reused."""
        items, rows = np.asarray(items, dtype=np.int64), np.asarray(rows, dtype=np.int64)
        if folded is None or folded.solved is None or folded.confidence is None:
            best: np.ndarray = _largest_contributions(rows, self._user(items, values))
            return best
        return largest_terms(
            rows, items, self.item_factors, folded.confidence, folded.solved, folded.positive
        )

    def _user(self, items: np.ndarray, values: np.ndarray) -> KernelUser:
        values = np.asarray(values, dtype=np.float32)
        return self.item_factors, items, values, self.weighting, self.gram, self.regularization


class FoldedUser(NamedTuple):
    """A user solved for by :meth:`UserSolver.fold`: the factors, and for explanations the
    Cholesky factor of the user's normal equations (``positive``; the equations themselves when
    they are not positive definite) and the liked items' confidences (float64). (A tuple: one is
    made per cold start.)"""

    vector: np.ndarray
    solved: np.ndarray | None = None
    positive: bool = True
    confidence: np.ndarray | None = None


# One user as the kernels take them: item factors, liked items, values, weighting, Y^T Y, lambda.
KernelUser = tuple[np.ndarray, np.ndarray, np.ndarray, KernelWeighting, np.ndarray, float]


@compiled
def _user_system(user: KernelUser) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    item_factors, items, values, weighting, gram, regularization = user
    indptr = np.array([0, items.size])
    weights = _confidences(indptr, items, values, item_factors.shape[0], weighting)
    confidence = weights.astype(np.float64)
    system, target = _normal_equations(item_factors, items, confidence, gram, regularization)
    return system, target, confidence


@compiled
def _largest_contributions(rows: np.ndarray, user: KernelUser) -> np.ndarray:
    item_factors, items, _, _, _, _ = user
    system, _, confidence = _user_system(user)
    low, positive = cholesky(system)
    return largest_terms(rows, items, item_factors, confidence, low if positive else system, positive)


@compiled
def largest_terms(
    rows: np.ndarray,
    items: np.ndarray,
    item_factors: np.ndarray,
    confidence: np.ndarray,
    solved: np.ndarray,
    positive: bool,
) -> np.ndarray:
    """The largest term c_uj y_i^T W_u y_j for each of ``rows`` (its position j in ``items``),
    W_u applied (solved for) to whichever side has fewer vectors: the liked or the ranked ones."""
    factors = solved.shape[0]
    liked_side = items.size <= rows.size
    side = items if liked_side else rows
    columns = np.empty((factors, side.size))
    for t in range(side.size):
        for i in range(factors):
            columns[i, t] = item_factors[side[t], i]
    weighted = solve_factored(solved, positive, columns)  # W_u y, one column per vector
    best = np.zeros(rows.size, dtype=np.int64)
    for r in range(rows.size):
        largest = -np.inf
        for j in range(items.size):
            term = 0.0
            if liked_side:
                for i in range(factors):
                    term += np.float64(item_factors[rows[r], i]) * weighted[i, j]
            else:
                for i in range(factors):
                    term += weighted[i, r] * np.float64(item_factors[items[j], i])
            term *= confidence[j]
            if term > largest:
                largest, best[r] = term, j
    return best


@compiled
def fold_user(user: KernelUser) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """One user's factors (float32), and what an explanation reuses (:class:`FoldedUser`)."""
    system, target, confidence = _user_system(user)
    low, positive = cholesky(system)
    solved = low if positive else system
    return solve_factored(solved, positive, target)[:, 0].astype(np.float32), solved, positive, confidence


@compiled
def _normal_equations(
    item_factors: np.ndarray,
    items: np.ndarray,
    confidence: np.ndarray,
    gram: np.ndarray,
    regularization: float,
) -> tuple[np.ndarray, np.ndarray]:
    factors = gram.shape[0]
    system = gram.copy()
    for i in range(factors):
        system[i, i] += regularization
    target = np.zeros((factors, 1))
    for t in range(items.size):
        weight, row = confidence[t], items[t]
        for i in range(factors):
            y_i = np.float64(item_factors[row, i])
            target[i, 0] += weight * y_i
            scaled = (weight - 1.0) * y_i
            for j in range(factors):
                system[i, j] += scaled * np.float64(item_factors[row, j])
    return system, target


@compiled
def cholesky(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """The lower Cholesky factor of ``a`` (a regularised Gram matrix), and whether ``a`` is
    positive definite (else the factor is unfinished: no regularisation, fewer items than
    factors; :func:`solve_factored` then takes ``a`` itself to the general solver)."""
    n = a.shape[0]
    low = np.zeros((n, n))
    for j in range(n):
        pivot = a[j, j]
        for k in range(j):
            pivot -= low[j, k] * low[j, k]
        if not pivot > 0.0:  # not positive definite (or NaN)
            return low, False
        low[j, j] = math.sqrt(pivot)
        for i in range(j + 1, n):
            total = a[i, j]
            for k in range(j):
                total -= low[i, k] * low[j, k]
            low[i, j] = total / low[j, j]
    return low, True


@compiled
def solve_factored(solved: np.ndarray, positive: bool, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` from ``a``'s Cholesky factor (``positive``) or, when it has none, ``a`` itself."""
    if not positive:
        return np.ascontiguousarray(np.linalg.solve(solved, b))
    low = solved
    n = low.shape[0]
    # One right-hand side per contiguous row, and both substitutions reading rows of L: the inner
    # loops are then dot products and axpys over contiguous memory, which LLVM vectorises.
    x = np.ascontiguousarray(b.T)
    for c in range(x.shape[0]):
        for i in range(n):  # L z = b
            total = x[c, i]
            for k in range(i):
                total -= low[i, k] * x[c, k]
            x[c, i] = total / low[i, i]
        for i in range(n - 1, -1, -1):  # L^T x = z, row i of L once x_i is known
            x[c, i] /= low[i, i]
            known = x[c, i]
            for k in range(i):
                x[c, k] -= low[i, k] * known
    return np.ascontiguousarray(x.T)
