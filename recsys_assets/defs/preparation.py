"""Stage 2, preparation: implicit-feedback interactions and temporal splits."""

from typing import Literal

import dagster as dg
import polars as pl

from ..processing.interactions import InteractionRules, build_interactions
from ..processing.splits import SplitRules, split_summary, split_violations, temporal_split
from ..validation.suites import interactions_expectations, validate
from .metadata import frame_metadata, latest_metadata, markdown_table, upstream_source
from .validation import report_result


# Defaults come from the pure rules (one place owns each default; benchmarks and tests that use
# the rules directly train as the pipeline does).
class InteractionsConfig(dg.Config):
    positive_threshold: float = InteractionRules.positive_threshold
    weighting: Literal["binary", "rating", "above_threshold"] = InteractionRules.weighting
    min_user_interactions: int = InteractionRules.min_user_interactions
    min_item_interactions: int = InteractionRules.min_item_interactions


class SplitConfig(dg.Config):
    strategy: Literal["global_cutoff", "leave_last_n"] = SplitRules.strategy
    validation_fraction: float = SplitRules.validation_fraction
    test_fraction: float = SplitRules.test_fraction
    n: int = SplitRules.n


@dg.asset(group_name="preparation", kinds={"polars", "parquet"})
def interactions(
    context: dg.AssetExecutionContext, config: InteractionsConfig, training_ratings: pl.DataFrame
) -> pl.DataFrame:
    """Positive interactions (rating >= threshold) with a confidence weight; re-ratings resolved to
    the latest one; users and items below the minimum counts removed (iterated k-core)."""
    rules = InteractionRules(**config.model_dump())
    frame, stats = build_interactions(training_ratings, rules)
    context.log.info(f"interactions: {stats}")
    context.add_output_metadata(
        {
            **frame_metadata(frame, upstream_source(context)),
            **stats,
            "positive_threshold": rules.positive_threshold,
            "weighting": rules.weighting,
            "density": stats["interactions"] / max(stats["users"] * stats["items"], 1),
        }
    )
    return frame


def recorded_interaction_rules(instance: dg.DagsterInstance) -> InteractionRules:
    """The rules the latest ``interactions`` were built with (its metadata records them), so a
    later stage applies the same threshold and weighting; the config defaults before any run."""
    recorded = latest_metadata(instance, dg.AssetKey("interactions"))
    values = InteractionsConfig().model_dump()
    for name in ("positive_threshold", "weighting"):
        if name in recorded:
            values[name] = recorded[name].value
    return InteractionRules(**values)


@dg.asset_check(
    asset=interactions,
    blocking=True,
    additional_ins={"raw_movies": dg.AssetIn("raw_movies")},
    description="great-expectations: schema, nulls, ratings at or above the positive threshold, "
    "positive weights, known movie ids, one row per (user, movie).",
)
def interactions_expectations_check(
    context: dg.AssetCheckExecutionContext, interactions: pl.DataFrame, raw_movies: pl.DataFrame
) -> dg.AssetCheckResult:
    threshold = recorded_interaction_rules(context.instance).positive_threshold
    expectations = interactions_expectations(raw_movies["movie_id"].to_list(), threshold)
    return report_result(validate(interactions, "interactions", expectations))


@dg.asset(group_name="preparation", kinds={"polars", "parquet"})
def temporal_splits(
    context: dg.AssetExecutionContext, config: SplitConfig, interactions: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """Train / validation / test by time: a global cutoff, or each user's last ``n`` held out.
    No held-out interaction is earlier than a training one of the same user."""
    rules = SplitRules(**config.model_dump())
    splits = temporal_split(interactions, rules)
    violations = split_violations(splits)
    if violations:
        raise dg.Failure("temporal split leaks the future: " + "; ".join(violations))
    summary = split_summary(splits)
    table = pl.DataFrame([{"split": name, **values} for name, values in summary.items()])
    metadata: dict = {
        "dagster/row_count": sum(len(f) for f in splits.values()),
        "data_source": upstream_source(context),
        "strategy": rules.strategy,
        "splits": dg.MetadataValue.md(markdown_table(table)),
        "preview_test": dg.MetadataValue.md(markdown_table(splits["test"], 5)),
    }
    if rules.strategy == "global_cutoff":
        metadata["validation_starts"] = summary["validation"]["first"] or ""
        metadata["test_starts"] = summary["test"]["first"] or ""
    else:
        metadata["held_out_per_user"] = rules.n
    for name, values in summary.items():
        metadata[f"{name}_interactions"] = values["interactions"]
        metadata[f"{name}_users"] = values["users"]
    metadata["test_cold_users"] = summary["test"]["cold_users"]
    context.add_output_metadata(metadata)
    return splits
