"""Stage 3, features: item and user features from the training window only."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from ..processing.content import ContentRules, content_vectors
from ..processing.features import item_features as build_item_features
from ..processing.features import last_training_time, training_window
from ..processing.features import user_features as build_user_features
from ..processing.frames import iso_time, number
from .metadata import frame_metadata, markdown_table, upstream_source


def _window(ratings: pl.DataFrame, splits: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, int]:
    return training_window(ratings, splits), last_training_time(splits)


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
            "median_ratings_per_user": number(features["n_ratings"].median()),
        }
    )
    return features


RULES = ContentRules()


class ContentConfig(dg.Config):
    """Block weights of the content vectors (0 leaves a block out) and their sizes."""

    genre_weight: float = Field(RULES.genre_weight, ge=0)
    year_weight: float = Field(RULES.year_weight, ge=0)
    tag_weight: float = Field(RULES.tag_weight, ge=0)
    genome_weight: float = Field(RULES.genome_weight, ge=0)
    tag_dimensions: int = Field(RULES.tag_dimensions, ge=1)
    min_tag_movies: int = Field(RULES.min_tag_movies, ge=1)
    genome_dimensions: int = Field(RULES.genome_dimensions, ge=1)


@dg.asset(group_name="features", kinds={"polars", "scikit-learn", "parquet"})
def content_features(
    context: dg.AssetExecutionContext,
    config: ContentConfig,
    raw_movies: pl.DataFrame,
    raw_tags: pl.DataFrame,
    tag_genome: pl.DataFrame,
) -> pl.DataFrame:
    """A unit content vector per movie of the catalogue (``content``): genres multi-hot, release
    year over decades, user-tag TF-IDF (LSA-reduced) and the tag genome where present, each block
    normalised and weighted. New movies are scored and found similar through these."""
    vectors = content_vectors(raw_movies, raw_tags, tag_genome, ContentRules(**config.model_dump()))
    frame = vectors.frame()
    blocks = pl.DataFrame(
        [
            {"block": name, "columns": end - start, "movies": vectors.coverage[name]}
            for name, (start, end) in vectors.blocks.items()
        ]
    )
    context.add_output_metadata(
        {
            "dagster/row_count": len(frame),
            "data_source": upstream_source(context),
            "dimensions": int(vectors.vectors.shape[1]),
            "blocks": dg.MetadataValue.md(markdown_table(blocks)),
            **{f"movies_with_{name}": count for name, count in vectors.coverage.items()},
            "example_neighbours": dg.MetadataValue.md(
                _example_neighbours(vectors.vectors, raw_movies, frame)
            ),
        }
    )
    return frame


def _example_neighbours(
    vectors: np.ndarray, movies: pl.DataFrame, frame: pl.DataFrame, shown: int = 5
) -> str:
    """The content neighbours of a few of the catalogue's movies: a quick sanity check in the UI."""
    titles = dict(zip(movies["movie_id"].to_list(), movies["title"].to_list(), strict=True))
    ids = frame["movie_id"].to_list()
    rows = []
    for row in np.linspace(0, len(ids) - 1, num=min(shown, len(ids)), dtype=int).tolist():
        similarity = vectors @ vectors[row]
        similarity[row] = -np.inf
        nearest = np.argsort(-similarity)[:3]
        rows.append(
            {
                "movie": titles.get(ids[row], str(ids[row])),
                "nearest by content": "; ".join(
                    f"{titles.get(ids[j], ids[j])} ({similarity[j]:.2f})" for j in nearest.tolist()
                ),
            }
        )
    return markdown_table(pl.DataFrame(rows), shown)
