"""Stage 1, ingestion: raw movies and ratings in one normalised schema, validated by GX."""

from typing import Any

import dagster as dg
import polars as pl

from ..processing.frames import number, rating_period
from ..sources.formats import read_genome, read_movies, read_ratings, read_tags
from ..streaming.simulator import parse_day
from ..streaming.store import BATCH_COLUMN
from ..validation.suites import ratings_expectations, validate
from .metadata import frame_metadata, markdown_table, upstream_source
from .partitions import RATING_BATCHES, rating_batch_spec
from .resources import DatasetSource, StreamStore
from .validation import report_result


def _source_metadata(context: dg.AssetExecutionContext, source: DatasetSource):
    resolved = source.resolve(context.log)
    extra: dict[str, Any] = {"source_kind": resolved.kind, "source_directory": str(resolved.directory)}
    if resolved.warnings:
        extra["warning"] = dg.MetadataValue.md("\n\n".join(f"**{w}**" for w in resolved.warnings))
    return resolved, extra


@dg.asset(group_name="ingestion", kinds={"polars", "parquet"})
def raw_movies(context: dg.AssetExecutionContext, source: DatasetSource) -> pl.DataFrame:
    """Movies (id, title without year, release year, genre list) from the configured source."""
    resolved, extra = _source_metadata(context, source)
    movies = read_movies(resolved.directory)
    genres = movies["genres"].explode().drop_nulls()
    context.add_output_metadata(
        {
            **frame_metadata(movies, resolved.describe()),
            **extra,
            "genres": genres.n_unique(),
            "movies_without_year": movies["year"].null_count(),
        }
    )
    return movies


@dg.asset(group_name="ingestion", kinds={"polars", "parquet"})
def raw_ratings(context: dg.AssetExecutionContext, source: DatasetSource) -> pl.DataFrame:
    """Every rating as (user_id, movie_id, rating, timestamp), parsed strictly from the source."""
    resolved, extra = _source_metadata(context, source)
    ratings = read_ratings(resolved.directory)
    if source.history_cutoff:
        # The stream simulator delivers everything from the cutoff on as new batches.
        before = len(ratings)
        ratings = ratings.filter(pl.col("timestamp") < parse_day(source.history_cutoff))
        extra["history_cutoff"] = source.history_cutoff
        extra["ratings_held_back_for_streaming"] = before - len(ratings)
    context.add_output_metadata(
        {
            **frame_metadata(ratings, resolved.describe()),
            **extra,
            "users": ratings["user_id"].n_unique(),
            "movies_rated": ratings["movie_id"].n_unique(),
            "mean_rating": number(ratings["rating"].mean()),
            **rating_period(ratings),
        }
    )
    return ratings


@dg.asset(group_name="ingestion", kinds={"polars", "parquet"})
def raw_tags(context: dg.AssetExecutionContext, source: DatasetSource) -> pl.DataFrame:
    """User tags (user_id, movie_id, tag, timestamp) where the release has them (``tags.csv``);
    empty otherwise. Like ratings, only tags before the streaming cutoff."""
    resolved, extra = _source_metadata(context, source)
    tags = read_tags(resolved.directory)
    if source.history_cutoff:
        tags = tags.filter(pl.col("timestamp") < parse_day(source.history_cutoff))
    top = tags.group_by("tag").len().sort(["len", "tag"], descending=[True, False]).head(15)
    context.add_output_metadata(
        {
            **frame_metadata(tags, resolved.describe()),
            **extra,
            "movies_tagged": tags["movie_id"].n_unique(),
            "distinct_tags": tags["tag"].n_unique(),
            "most_used_tags": dg.MetadataValue.md(markdown_table(top)),
        }
    )
    return tags


@dg.asset(group_name="ingestion", kinds={"polars", "parquet"})
def tag_genome(context: dg.AssetExecutionContext, source: DatasetSource) -> pl.DataFrame:
    """The tag genome (movie_id, tag, relevance in [0, 1]) where the release has it (ml-20m and
    later: ``genome-scores.csv``); empty otherwise."""
    resolved, extra = _source_metadata(context, source)
    genome = read_genome(resolved.directory)
    context.add_output_metadata(
        {
            **frame_metadata(genome, resolved.describe()),
            **extra,
            "movies_covered": genome["movie_id"].n_unique(),
            "genome_tags": genome["tag"].n_unique(),
        }
    )
    return genome


@dg.asset_check(
    asset=raw_ratings,
    blocking=True,
    additional_ins={"raw_movies": dg.AssetIn("raw_movies")},
    description="great-expectations: schema, nulls, rating range and half-star step, known movie "
    "ids, timestamp range, no duplicate events. Blocks everything downstream when it fails.",
)
def raw_ratings_expectations(raw_ratings: pl.DataFrame, raw_movies: pl.DataFrame) -> dg.AssetCheckResult:
    report = validate(raw_ratings, "raw_ratings", ratings_expectations(raw_movies["movie_id"].to_list()))
    return report_result(report)


@dg.asset(group_name="ingestion", kinds={"polars", "parquet"}, deps=[rating_batch_spec])
def training_ratings(
    context: dg.AssetExecutionContext, raw_ratings: pl.DataFrame, stream: StreamStore
) -> pl.DataFrame:
    """Every rating the model learns from: the source's history plus every accepted stream batch
    (column ``batch`` names it; null for history). An event delivered twice counts once."""
    folders = stream.folders()
    streamed = folders.accepted_ratings()
    history = raw_ratings.with_columns(pl.lit(None, dtype=pl.String).alias(BATCH_COLUMN))
    combined = pl.concat([history, streamed]).unique(
        ["user_id", "movie_id", "timestamp"], keep="first", maintain_order=True
    )
    included = set(streamed[BATCH_COLUMN].unique().to_list())
    registered = context.instance.get_dynamic_partitions(RATING_BATCHES)
    batches = [b for b in registered if b in included] + sorted(included - set(registered))
    context.add_output_metadata(
        {
            **frame_metadata(combined, upstream_source(context)),
            "history_ratings": len(raw_ratings),
            "streamed_ratings": len(streamed),
            "repeated_events_dropped": len(history) + len(streamed) - len(combined),
            "accepted_batches": len(batches),
            "latest_batch": batches[-1] if batches else "",  # the last registered
            "trained_batches": dg.MetadataValue.json(batches),
            "last_rating": rating_period(combined)["last_rating"],
            "users": combined["user_id"].n_unique(),
            "movies_rated": combined["movie_id"].n_unique(),
        }
    )
    return combined
