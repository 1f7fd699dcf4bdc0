"""The ``recsys_stream`` code location: rating batches arriving, validated and measured, and
online evaluation over time (KPIs per day, replay per batch).

Its partitioned assets would stop ``dagster asset materialize -m recsys_assets.definitions
--select '*'`` (a partitioned selection needs ``--partition``), so they live here. The main
location's ``training_ratings`` reads the accepted batches and its ``retrain_sensor`` acts on the
drift reports; both locations share one instance, one asset store and the same folders.
"""

from __future__ import annotations

import dagster as dg

from .defs.online_partitions import (
    batch_replay_evaluation,
    daily_kpis_job,
    daily_kpis_schedule,
    daily_serving_kpis,
)
from .defs.resources import resources_from_settings
from .defs.streaming import drift_report, ingest_batch_job, rating_batch, rating_batch_sensor
from .settings import Settings

# Assets of the main location these read, through the shared IO manager.
upstream = [
    dg.AssetSpec("raw_movies", group_name="ingestion"),
    dg.AssetSpec("training_ratings", group_name="ingestion"),
]

defs = dg.Definitions(
    assets=[rating_batch, drift_report, batch_replay_evaluation, daily_serving_kpis, *upstream],
    jobs=[ingest_batch_job, daily_kpis_job],
    sensors=[rating_batch_sensor],
    schedules=[daily_kpis_schedule],
    executor=dg.in_process_executor,
    resources=resources_from_settings(Settings.from_env()),
)
