"""Confidence weighting for implicit ALS, and folding a new user into a trained model.

Shared by training (recsys_assets) and serving, so a cold-start user is weighted and solved for
exactly as training users were. numpy/scipy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

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
    values = values.astype(np.float64)
    if weighting.scheme == "linear":
        out = weighting.alpha * values
    elif weighting.scheme == "log":
        out = weighting.alpha * np.log1p(values / weighting.epsilon)
    else:
        if length_norm is None:
            raise ValueError("bm25 weighting needs the items' length normalisation")
        per_user = np.diff(indptr)
        idf = np.log(max(n_items, 1)) - np.log1p(per_user)
        user_of = np.repeat(np.arange(len(per_user)), per_user)
        k1 = weighting.bm25_k1
        out = weighting.alpha * values * (k1 + 1.0) / (k1 * length_norm[indices] + values)
        out *= idf[user_of]
    # A confidence must stay positive for the solver; BM25's idf can reach zero for very heavy users.
    return np.maximum(out, 1e-6).astype(np.float32)


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
    as training. ``gram`` (Y^T Y) can be passed in precomputed.
    """
    items = np.asarray(items, dtype=np.int64)
    factors = item_factors.shape[1]
    if items.size == 0:
        return np.zeros(factors, dtype=np.float32)
    confidence = weight_rows(
        np.array([0, items.size]),
        items,
        np.asarray(values, dtype=np.float32),
        item_factors.shape[0],
        weighting,
        length_norm,
    ).astype(np.float64)
    y = item_factors[items].astype(np.float64)
    gram = item_factors.T.astype(np.float64) @ item_factors if gram is None else gram
    a = gram + (y.T * (confidence - 1.0)) @ y + regularization * np.eye(factors)
    b = y.T @ confidence
    return solve_positive(a, b).astype(np.float32)


def solve_positive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` for a symmetric positive definite ``a`` (a regularised Gram matrix): LAPACK's
    Cholesky solver directly, 8 us against numpy.linalg.solve's 21 us at 32 factors (a sizeable
    share of a cold-start request). A matrix that is not positive definite (no regularisation,
    fewer items than factors) goes to the general solver."""
    _, x, info = lapack.dposv(a, b)
    if info != 0:
        return np.asarray(np.linalg.solve(a, b))
    return np.asarray(x)
