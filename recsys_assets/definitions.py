"""The main code location: ``dagster asset materialize -m recsys_assets.definitions --select '*'``.

Stream batches are materialised by the ``recsys_stream`` location (``stream_definitions``); this
one sees them through an external spec, trains on the accepted ones and retrains on demand.
"""

from __future__ import annotations

import dagster as dg

from .defs import catalogue, features, ingestion, modeling, online, preparation, promotion
from .defs.catalogue import catalogue_refresh_job, daily_catalogue_refresh
from .defs.partitions import rating_batch_spec
from .defs.resources import resources_from_settings
from .defs.retraining import retrain_job, retrain_sensor, weekly_retrain
from .settings import Settings

all_assets = dg.load_assets_from_modules(
    [ingestion, preparation, features, modeling, promotion, catalogue, online]
)
all_checks = dg.load_asset_checks_from_modules([ingestion, preparation, modeling])

recsys_pipeline = dg.define_asset_job(
    "recsys_pipeline", selection=dg.AssetSelection.all(), description="Build every asset."
)

defs = dg.Definitions(
    assets=[*all_assets, rating_batch_spec],
    asset_checks=all_checks,
    jobs=[recsys_pipeline, retrain_job, catalogue_refresh_job],
    sensors=[retrain_sensor],
    schedules=[weekly_retrain, daily_catalogue_refresh],
    # Each step is seconds of work; spawning a process per step (importing polars, GX, ...) costs
    # more than it saves on small machines.
    executor=dg.in_process_executor,
    resources=resources_from_settings(Settings.from_env()),
)
