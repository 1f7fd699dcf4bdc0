"""The ``recsys_stream`` code location: rating batches arriving, validated and measured.

Its partitioned assets would stop ``dagster asset materialize -m recsys_assets.definitions
--select '*'`` (a partitioned selection needs ``--partition``), so they live here. The main
location's ``training_ratings`` reads the accepted batches and its ``retrain_sensor`` acts on the
drift reports; both locations share one instance, one asset store and the same folders.
"""

from __future__ import annotations

import dagster as dg

from .defs.resources import resources_from_settings
from .defs.streaming import drift_report, ingest_batch_job, rating_batch, rating_batch_sensor
from .settings import Settings

# Assets of the main location these read, through the shared IO manager.
upstream = [
    dg.AssetSpec("raw_movies", group_name="ingestion"),
    dg.AssetSpec("training_ratings", group_name="ingestion"),
]

defs = dg.Definitions(
    assets=[rating_batch, drift_report, *upstream],
    jobs=[ingest_batch_job],
    sensors=[rating_batch_sensor],
    executor=dg.in_process_executor,
    resources=resources_from_settings(Settings.from_env()),
)
