"""FAISS indexes over item factors: ids are movie ids, scores are inner products like ALS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw", "ivf"]


def build_index(
    item_factors: np.ndarray,
    item_ids: np.ndarray,
    kind: IndexKind = "flat",
    hnsw_m: int = 32,
    hnsw_ef_search: int = 128,
    ivf_nlist: int | None = None,
    ivf_nprobe: int = 16,
) -> faiss.Index:
    vectors = np.ascontiguousarray(item_factors, dtype=np.float32)
    ids = np.asarray(item_ids, dtype=np.int64)
    dim = vectors.shape[1]
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efSearch = hnsw_ef_search
        index = faiss.IndexIDMap(inner)
    elif kind == "ivf":
        nlist = ivf_nlist or max(1, int(np.sqrt(len(ids))))
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.nprobe = min(ivf_nprobe, nlist)
        index = ivf
    else:
        raise ValueError(f"unknown index kind {kind!r}: use flat, hnsw or ivf")
    index.add_with_ids(vectors, ids)
    return index


def index_recall(
    index: faiss.Index,
    queries: np.ndarray,
    item_factors: np.ndarray,
    item_ids: np.ndarray,
    k: int,
    tolerance: float = 1e-5,
) -> float:
    """Share of the index's top-k results that belong to the exact top-k by inner product.

    A result counts when its exact score reaches the exact k-th best score (within a relative
    float tolerance), so exact ties at the cut-off are not counted as misses.
    """
    k = min(k, len(item_ids))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, found = index.search(queries, k)
    scores = queries @ np.asarray(item_factors, dtype=np.float32).T
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    order = np.argsort(item_ids)
    sorted_ids = np.asarray(item_ids)[order]
    valid = found >= 0
    where = np.minimum(np.searchsorted(sorted_ids, np.where(valid, found, sorted_ids[0])), len(order) - 1)
    columns = order[where]
    found_scores = np.take_along_axis(scores, columns, axis=1)
    correct = valid & (found_scores >= (kth - tolerance * np.maximum(1.0, np.abs(kth)))[:, None])
    return float(correct.sum() / found.size)


@dataclass
class ItemIndex:
    """A FAISS index in a picklable form, with the recall bound its check enforces."""

    kind: str
    data: np.ndarray
    min_recall: float
    settings: dict

    @classmethod
    def wrap(cls, index: faiss.Index, kind: str, min_recall: float, settings: dict) -> ItemIndex:
        return cls(kind, faiss.serialize_index(index), min_recall, settings)

    def load(self) -> faiss.Index:
        return faiss.deserialize_index(self.data)
