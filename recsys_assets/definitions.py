"""The Dagster code location: ``dagster asset materialize -m recsys_assets.definitions --select '*'``."""

from __future__ import annotations

import dagster as dg

from .defs import features, ingestion, modeling, preparation
from .defs.resources import AtomicFileIOManager, BundleStore, DatasetSource, MLflowTracking
from .settings import Settings

settings = Settings.from_env()

all_assets = dg.load_assets_from_modules([ingestion, preparation, features, modeling])
all_checks = dg.load_asset_checks_from_modules([ingestion, preparation, modeling])

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
        "io_manager": AtomicFileIOManager(base_dir=str(settings.data_root / "assets")),
        "mlflow_tracking": MLflowTracking(tracking_uri=settings.mlflow_tracking_uri),
        "bundle_store": BundleStore(root=str(settings.bundle_root)),
    },
)
