"""Online evaluation over time: serving KPIs per day of traffic and the replay evaluation per
stream batch.

They live in the ``recsys_stream`` location, beside the batches: a partitioned asset in the main
location would stop ``dagster asset materialize -m recsys_assets.definitions --select '*'``. The
main location keeps the cumulative ``serving_kpis`` and ``replay_evaluation`` (the experiment
report and the promotion read those); these answer "how did yesterday go" and "how did the model
do on this week's ratings", with the same functions and the same metadata.
"""

import dagster as dg
import polars as pl

from ..online.replay import kpis_by_group, replay_metrics, replayed_for, served_lists
from .online import GROUP_NAME, ReplayConfig, kpi_metadata, replay_metadata
from .partitions import RATING_BATCH, rating_batches
from .resources import RequestLogStore

# UTC days of the server's clock; today's partition exists while the day runs (end_offset=1).
request_days = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1)


@dg.asset(
    group_name=GROUP_NAME,
    partitions_def=request_days,
    kinds={"sqlite", "polars"},
    ins={"raw_movies": dg.AssetIn("raw_movies"), "training_ratings": dg.AssetIn("training_ratings")},
)
def daily_serving_kpis(
    context: dg.AssetExecutionContext,
    request_log: RequestLogStore,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
) -> pl.DataFrame:
    """``serving_kpis`` for one UTC day of requests (by the time they reached the API)."""
    window = context.partition_time_window
    log = request_log.read(arrived=(window.start.timestamp(), window.end.timestamp()))
    kpis = kpis_by_group(log, raw_movies, training_ratings)
    context.add_output_metadata({"day": context.partition_key, **kpi_metadata(kpis, log)})
    return kpis


@dg.asset(
    group_name=GROUP_NAME,
    partitions_def=rating_batches,
    kinds={"sqlite", "polars"},
    ins={"rating_batch": dg.AssetIn(RATING_BATCH)},
)
def batch_replay_evaluation(
    context: dg.AssetExecutionContext,
    config: ReplayConfig,
    request_log: RequestLogStore,
    rating_batch: pl.DataFrame,
) -> pl.DataFrame:
    """``replay_evaluation`` for one batch: the requests replayed before it (its users, stamped
    from just before its first rating to its last) scored against the batch's own ratings. A
    quarantined batch has no ratings, so nothing is scored and the metadata says so."""
    served = replayed_for(served_lists(request_log.read()), rating_batch)
    metrics = replay_metrics(served, rating_batch, config.horizon_days, config.positive_threshold)
    context.add_output_metadata(
        {
            "batch": context.partition_key,
            "batch_ratings": len(rating_batch),
            "horizon_days": config.horizon_days,
            **replay_metadata(metrics, config.bootstrap_samples),
        }
    )
    return metrics


daily_kpis_job = dg.define_asset_job("daily_serving_kpis_job", selection=[daily_serving_kpis])
# Shortly after midnight UTC, the day that just ended.
daily_kpis_schedule = dg.build_schedule_from_partitioned_job(daily_kpis_job, minute_of_hour=15)
