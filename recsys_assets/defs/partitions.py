"""The stream's partitions, shared by both code locations.

The batch assets live in their own code location (``recsys_assets.stream_definitions``): a
partitioned asset in ``recsys_assets.definitions`` would make the documented
``dagster asset materialize -m recsys_assets.definitions --select '*'`` refuse to run without a
``--partition``. The main location refers to the batches through this external spec.
"""

import dagster as dg

RATING_BATCHES = "rating_batches"
rating_batches = dg.DynamicPartitionsDefinition(name=RATING_BATCHES)

RATING_BATCH = dg.AssetKey("rating_batch")
DRIFT_REPORT = dg.AssetKey("drift_report")

rating_batch_spec = dg.AssetSpec(
    RATING_BATCH,
    partitions_def=rating_batches,
    group_name="streaming",
    description="One validated batch of new ratings (materialised by the stream code location).",
)
