"""Explicit ratings → implicit-feedback interactions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

Weighting = Literal["binary", "rating", "above_threshold"]


@dataclass(frozen=True)
class InteractionRules:
    """What counts as a positive interaction and how much it weighs.

    ``weighting``: ``binary`` (every positive weighs 1), ``rating`` (the star value) or
    ``above_threshold`` (1 at the threshold, growing by 1 per star above it).
    """

    positive_threshold: float = 4.0
    weighting: Weighting = "binary"
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    max_core_rounds: int = 100

    def __post_init__(self) -> None:
        if not 0.5 <= self.positive_threshold <= 5.0:
            raise ValueError(f"positive_threshold must be within 0.5..5, got {self.positive_threshold}")
        if self.weighting not in ("binary", "rating", "above_threshold"):
            raise ValueError(f"unknown weighting {self.weighting!r}")
        if self.min_user_interactions < 1 or self.min_item_interactions < 1:
            raise ValueError("minimum interaction counts must be at least 1")


def _weight(rules: InteractionRules) -> pl.Expr:
    rating = pl.col("rating").cast(pl.Float32)
    if rules.weighting == "binary":
        return pl.lit(1.0, dtype=pl.Float32)
    if rules.weighting == "rating":
        return rating
    return 1.0 + rating - rules.positive_threshold


def k_core(frame: pl.DataFrame, min_user: int, min_item: int, max_rounds: int) -> tuple[pl.DataFrame, int]:
    """Drop users and items below their minimum counts until none is left (returns rounds used)."""
    for rounds in range(1, max_rounds + 1):
        counted = frame.with_columns(
            pl.len().over("user_id").alias("_u"), pl.len().over("movie_id").alias("_i")
        )
        kept = counted.filter((pl.col("_u") >= min_user) & (pl.col("_i") >= min_item)).drop("_u", "_i")
        if len(kept) == len(frame):
            return kept, rounds
        frame = kept
    return frame, max_rounds


def latest_ratings(ratings: pl.DataFrame) -> pl.DataFrame:
    """One rating per (user, movie): a re-rating replaces the earlier one."""
    return ratings.sort("timestamp").unique(["user_id", "movie_id"], keep="last")


def weighted_positives(latest: pl.DataFrame, rules: InteractionRules) -> pl.DataFrame:
    """The ratings at or above the threshold, with their confidence weight (no k-core)."""
    return latest.filter(pl.col("rating") >= rules.positive_threshold).with_columns(
        weight=_weight(rules).cast(pl.Float32)
    )


def build_interactions(ratings: pl.DataFrame, rules: InteractionRules) -> tuple[pl.DataFrame, dict]:
    """Resolve duplicates (latest rating wins), keep positives, weight them, apply the k-core."""
    latest = latest_ratings(ratings)
    positives = weighted_positives(latest, rules)
    cored, rounds = k_core(
        positives, rules.min_user_interactions, rules.min_item_interactions, rules.max_core_rounds
    )
    cored = cored.sort(["user_id", "timestamp", "movie_id"]).select(
        "user_id", "movie_id", "rating", "weight", "timestamp"
    )
    stats = {
        "ratings_in": len(ratings),
        "duplicates_resolved": len(ratings) - len(latest),
        "below_threshold": len(latest) - len(positives),
        "removed_by_min_counts": len(positives) - len(cored),
        "core_rounds": rounds,
        "interactions": len(cored),
        "users": cored["user_id"].n_unique(),
        "items": cored["movie_id"].n_unique(),
    }
    return cored, stats
