"""Assemble a production bundle from a trained model (the asset and the benchmarks share this)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys_serving.bundle import write_bundle
from recsys_serving.confidence import confidence_matrix

from ..processing.interactions import InteractionRules, latest_ratings, weighted_positives
from .index import build_index
from .matrices import IdMap, to_csr
from .recommenders import solve_users
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
    rules: InteractionRules | None = None,
) -> Path:
    """Write a bundle of the model's chosen kind over the model's catalogue.

    Its users are everyone in ``ratings``, and each user's input (``liked``) is every interaction
    they have, test split included: the test split only held them out to measure the model, and a
    user's latest movies say most about the next ones. Users the k-core dropped (too few
    positives) get their positive ratings under ``rules`` (the interactions' threshold and
    weighting) as input, so they are folded in rather than served popularity; users without any
    positive still have every rated movie in ``seen``. ``held_out`` marks the liked pairs the model
    was not fitted on (the test split and the dropped users' positives), so a later comparison and
    the server know what was folded in. ALS user factors are solved again from the whole history
    with the fitted item factors. ``top_n`` > 0 ranks each user's best unseen items in advance.
    """
    rules = rules or InteractionRules()
    history = pl.concat([splits[name] for name in ("train", "validation", "test")])
    columns = history.columns
    modelled = history["user_id"].unique()
    dropped = weighted_positives(
        latest_ratings(ratings.filter(~pl.col("user_id").is_in(modelled.implode()))), rules
    ).select(columns)
    users = np.union1d(model.ids.user_ids, ratings["user_id"].unique().to_numpy().astype(np.int64))
    ids = IdMap(users, model.ids.item_ids)
    seen = to_csr(ratings, ids, value=None)
    seen.data[:] = 1.0
    liked = to_csr(pl.concat([history, dropped]), ids)
    held_out = to_csr(pl.concat([splits["test"], dropped]), ids, value=None)
    common = dict(
        kind=model.kind,
        item_ids=ids.item_ids,
        user_ids=ids.user_ids,
        seen=seen,
        liked=liked,
        held_out=held_out,
        movies=movies,
        manifest=manifest,
        top_n=top_n,
    )
    if model.kind != "als":
        return write_bundle(
            root, **common, item_similarity=model.item_similarity, binary_input=model.binary_input
        )
    weighting = model.params.weighting
    return write_bundle(
        root,
        **common,
        item_factors=model.item_factors,
        user_factors=solve_users(
            model.item_factors,
            confidence_matrix(liked, weighting, model.length_norm),
            model.params.regularization,
        ),
        index=index if index is not None else build_index(model.item_factors, ids.item_ids),
        weighting=weighting,
        regularization=model.params.regularization,
        length_norm=model.length_norm,
    )
