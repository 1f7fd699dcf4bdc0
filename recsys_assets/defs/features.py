"""Stage 3, features: item and user features from the training window only."""

import dagster as dg
import polars as pl

from ..processing.features import item_features as build_item_features
from ..processing.features import training_window
from ..processing.features import user_features as build_user_features
from ..processing.splits import iso_time
from .metadata import frame_metadata, upstream_source


def _window(ratings: pl.DataFrame, splits: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, int]:
    return training_window(ratings, splits), int(splits["train"]["timestamp"].max())


@dg.asset(group_name="features", kinds={"polars", "parquet"})
def item_features(
    context: dg.AssetExecutionContext,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
    temporal_splits: dict[str, pl.DataFrame],
) -> pl.DataFrame:
    """Per movie: genres multi-hot, release year and age, rating count, popularity and its rank,
    mean rating, days since the last rating — from ratings visible at training time."""
    window, reference_ts = _window(training_ratings, temporal_splits)
    features = build_item_features(raw_movies, window, reference_ts)
    rated = features.filter(pl.col("rating_count") > 0)
    context.add_output_metadata(
        {
            **frame_metadata(features.drop("genres"), upstream_source(context)),
            "movies_with_ratings": len(rated),
            "genre_columns": sum(c.startswith("genre_") for c in features.columns),
            "reference_time": iso_time(reference_ts),
        }
    )
    return features


@dg.asset(group_name="features", kinds={"polars", "parquet"})
def user_features(
    context: dg.AssetExecutionContext,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
    temporal_splits: dict[str, pl.DataFrame],
) -> pl.DataFrame:
    """Per user: number of ratings, mean and spread, active days, recency, top genres."""
    window, reference_ts = _window(training_ratings, temporal_splits)
    features = build_user_features(window, raw_movies, reference_ts)
    context.add_output_metadata(
        {
            **frame_metadata(features, upstream_source(context)),
            "median_ratings_per_user": float(features["n_ratings"].median() or 0),
        }
    )
    return features
