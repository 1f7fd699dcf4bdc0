"""The Dagster code location: ``dagster asset materialize -m recsys_assets.definitions --select '*'``."""

from __future__ import annotations

import dagster as dg

from .defs import features, ingestion, preparation
from .defs.resources import DatasetSource, ParquetIOManager
from .settings import Settings

settings = Settings.from_env()

all_assets = dg.load_assets_from_modules([ingestion, preparation, features])
all_checks = dg.load_asset_checks_from_modules([ingestion, preparation])

recsys_pipeline = dg.define_asset_job(
    "recsys_pipeline", selection=dg.AssetSelection.all(), description="Build every asset."
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[recsys_pipeline],
    # Each step is seconds of work; spawning a process per step (importing polars, GX, ...) costs
    # more than it saves on small machines.
    executor=dg.in_process_executor,
    resources={
        "source": DatasetSource.from_settings(settings),
        "io_manager": ParquetIOManager(base_dir=str(settings.data_root / "assets")),
    },
)
