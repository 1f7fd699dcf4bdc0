"""Id maps and users x items CSR matrices (implicit >= 0.5 convention)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp


@dataclass(frozen=True)
class IdMap:
    """Sorted external ids; row/column i of every matrix belongs to ``ids[i]``."""

    user_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> IdMap:
        return cls(
            user_ids=np.sort(frame["user_id"].unique().to_numpy()).astype(np.int64),
            item_ids=np.sort(frame["movie_id"].unique().to_numpy()).astype(np.int64),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)

    @staticmethod
    def _lookup(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        position = np.searchsorted(ids, values)
        position = np.minimum(position, max(len(ids) - 1, 0))
        found = (ids[position] == values) if len(ids) else np.zeros(len(values), dtype=bool)
        return np.where(found, position, -1)

    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        return self._lookup(self.user_ids, np.asarray(user_ids, dtype=np.int64))

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        return self._lookup(self.item_ids, np.asarray(item_ids, dtype=np.int64))


def to_csr(frame: pl.DataFrame, ids: IdMap, value: str | None = "weight") -> sp.csr_matrix:
    """Users x items matrix of ``value`` (1.0 when None); rows of unknown users/items are dropped."""
    users = ids.user_index(frame["user_id"].to_numpy())
    items = ids.item_index(frame["movie_id"].to_numpy())
    keep = (users >= 0) & (items >= 0)
    data = (
        np.ones(int(keep.sum()), dtype=np.float32)
        if value is None
        else frame[value].to_numpy().astype(np.float32)[keep]
    )
    matrix = sp.csr_matrix((data, (users[keep], items[keep])), shape=ids.shape, dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


def fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of the rows (order-independent), to tie a model to its training data."""
    row_hashes = np.sort(frame.hash_rows(seed=0).to_numpy())
    return hashlib.sha256(row_hashes.tobytes()).hexdigest()[:16]
