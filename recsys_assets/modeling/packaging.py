"""Assemble a production bundle from a trained model (the asset and the benchmarks share this)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_serving.bundle import write_bundle

from .index import build_index
from .matrices import to_csr
from .training import TrainedModel


def package_bundle(
    root: Path,
    model: TrainedModel,
    movies: pl.DataFrame,
    ratings: pl.DataFrame,
    splits: dict[str, pl.DataFrame],
    manifest: dict,
    index=None,
    top_n: int = 50,
) -> Path:
    """Write a bundle: seen = every movie a user rated, liked = the training weights, and each
    user's ``top_n`` best unseen items ranked in advance (0: none)."""
    seen = to_csr(ratings, model.ids, value=None)
    seen.data[:] = 1.0
    liked = to_csr(pl.concat([splits["train"], splits["validation"]]), model.ids)
    return write_bundle(
        root,
        item_ids=model.ids.item_ids,
        user_ids=model.ids.user_ids,
        item_factors=model.item_factors,
        user_factors=model.user_factors,
        seen=seen,
        liked=liked,
        index=index if index is not None else build_index(model.item_factors, model.ids.item_ids),
        movies=movies,
        weighting=model.params.weighting,
        regularization=model.params.regularization,
        length_norm=model.length_norm,
        manifest=manifest,
        top_n=top_n,
    )
