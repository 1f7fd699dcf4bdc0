"""Item and user features, computed only from what was known when the training data ends."""

from __future__ import annotations

import re

import polars as pl

SECONDS_PER_DAY = 86_400


def genre_column(genre: str) -> str:
    return "genre_" + re.sub(r"[^a-z0-9]+", "_", genre.lower()).strip("_")


def last_training_time(splits: dict[str, pl.DataFrame]) -> int:
    """Unix time of the last training interaction: features are computed as of then."""
    return int(splits["train"].select(pl.col("timestamp").max()).item())


def training_window(ratings: pl.DataFrame, splits: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Ratings visible at training time: nothing from a user's held-out period onwards, and
    nothing after the last training interaction, so features cannot leak validation or test."""
    held_out = pl.concat([splits["validation"], splits["test"]])
    cutoff = held_out.group_by("user_id").agg(pl.col("timestamp").min().alias("_cutoff"))
    last_train = last_training_time(splits)
    return (
        ratings.join(cutoff, on="user_id", how="left")
        .filter(pl.col("_cutoff").is_null() | (pl.col("timestamp") < pl.col("_cutoff")))
        .filter(pl.col("timestamp") <= last_train)
        .drop("_cutoff")
    )


def item_features(movies: pl.DataFrame, window: pl.DataFrame, reference_ts: int) -> pl.DataFrame:
    """One row per movie: genres multi-hot, release year, popularity, mean rating, recency."""
    genres = sorted({g for row in movies["genres"].to_list() for g in row})
    reference_year = pl.from_epoch(pl.lit(reference_ts), time_unit="s").dt.year()
    stats = window.group_by("movie_id").agg(
        pl.len().cast(pl.Int32).alias("rating_count"),
        pl.col("rating").mean().cast(pl.Float32).alias("mean_rating"),
        pl.col("timestamp").min().alias("first_rated"),
        pl.col("timestamp").max().alias("last_rated"),
    )
    total = max(len(window), 1)
    return (
        movies.join(stats, on="movie_id", how="left")
        .with_columns(pl.col("rating_count").fill_null(0))
        .with_columns(
            *(pl.col("genres").list.contains(g).cast(pl.UInt8).alias(genre_column(g)) for g in genres),
            pl.col("genres").list.len().cast(pl.UInt8).alias("n_genres"),
            (reference_year - pl.col("year")).cast(pl.Int16).alias("age_years"),
            (pl.col("rating_count") / total).cast(pl.Float32).alias("popularity"),
            pl.col("rating_count").rank("min", descending=True).cast(pl.Int32).alias("popularity_rank"),
            ((reference_ts - pl.col("last_rated")) / SECONDS_PER_DAY)
            .cast(pl.Float32)
            .alias("days_since_last_rating"),
        )
        .sort("movie_id")
    )


def user_features(
    window: pl.DataFrame, movies: pl.DataFrame, reference_ts: int, top_genres: int = 3
) -> pl.DataFrame:
    """One row per user: activity, mean rating, active span, recency and favourite genres."""
    activity = window.group_by("user_id").agg(
        pl.len().cast(pl.Int32).alias("n_ratings"),
        pl.col("rating").mean().cast(pl.Float32).alias("mean_rating"),
        pl.col("rating").std().fill_null(0.0).cast(pl.Float32).alias("rating_std"),
        pl.col("timestamp").min().alias("first_rated"),
        pl.col("timestamp").max().alias("last_rated"),
    )
    # Favourite genres: the most frequent genres among movies the user rated at or above their mean.
    liked = (
        window.join(activity.select("user_id", "mean_rating"), on="user_id")
        .filter(pl.col("rating") >= pl.col("mean_rating"))
        .join(movies.select("movie_id", "genres"), on="movie_id")
        .explode("genres")
        .drop_nulls("genres")
        .group_by("user_id", "genres")
        .len()
        .sort(["user_id", "len", "genres"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("genres").head(top_genres).alias("top_genres"))
    )
    return (
        activity.join(liked, on="user_id", how="left")
        .with_columns(
            pl.col("top_genres").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            ((pl.col("last_rated") - pl.col("first_rated")) / SECONDS_PER_DAY)
            .cast(pl.Float32)
            .alias("active_days"),
            ((reference_ts - pl.col("last_rated")) / SECONDS_PER_DAY)
            .cast(pl.Float32)
            .alias("days_since_last_rating"),
        )
        .sort("user_id")
    )
