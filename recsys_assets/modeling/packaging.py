"""Assemble a production bundle from a trained model (the asset and the benchmarks share this)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys_serving.bundle import MANIFEST_GENERATED, Bundle, ColdItems, write_bundle
from recsys_serving.confidence import confidence_matrix

from ..processing.content import ContentVectors
from ..processing.interactions import InteractionRules, latest_ratings, weighted_positives
from .content import ContentModelRules, cold_items
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
    content: ContentVectors | None = None,
    content_rules: ContentModelRules | None = None,
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
    With ``content`` (vectors for the whole catalogue), every movie the model does not score is
    added as a cold item, scored from its content (:mod:`.content`).
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
    cold = None
    if content is not None:
        scorer = (
            {"item_factors": model.item_factors}
            if model.kind == "als"
            else {"item_similarity": model.item_similarity}
        )
        cold = cold_items(content, ids.item_ids, ids.user_ids, ratings, rules=content_rules, **scorer)
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
        cold=cold,
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


def refresh_bundle(root: Path, base: Bundle, movies: pl.DataFrame, cold: ColdItems, details: dict) -> Path:
    """A new bundle with ``base``'s model, users and precomputed lists unchanged and ``cold`` as
    its cold part: the catalogue as it is now, without retraining."""
    manifest = {k: v for k, v in base.manifest.items() if k not in MANIFEST_GENERATED}
    manifest["refreshed_from"] = {"version": base.version, **details}
    top_lists = (
        (base.top_rows, base.top_scores)
        if base.top_rows is not None and base.top_scores is not None
        else None
    )
    similar_lists = (
        (base.similar_rows, base.similar_scores)
        if base.similar_rows is not None and base.similar_scores is not None
        else None
    )
    return write_bundle(
        root,
        kind=base.kind,
        item_ids=base.item_ids,
        user_ids=base.user_ids,
        seen=base.seen,
        liked=base.liked,
        held_out=base.held_out,
        movies=movies,
        manifest=manifest,
        item_factors=base.item_factors,
        user_factors=base.user_factors,
        index=base.index,
        weighting=base.weighting,
        regularization=base.regularization,
        length_norm=base.length_norm,
        item_similarity=base.item_similarity,
        binary_input=base.binary_input,
        top_lists=top_lists,
        top_because=base.top_because,
        similar_lists=similar_lists,
        cold=cold,
    )
