"""When to retrain: after new batches ask for it (drift or enough new ratings), and weekly.

Both are on by default and can be switched off in the UI (Automation). A retrain re-materialises
everything from ``training_ratings`` down, ending in ``promotion_decision``.
"""

import dagster as dg

from ..streaming.retrain import DriftSignal, decide_retrain
from .metadata import latest_metadata
from .partitions import DRIFT_REPORT

retrain_job = dg.define_asset_job(
    "retrain",
    # The catalogue's content is read again too: new movies come with a retrain as well.
    selection=dg.AssetSelection.assets("training_ratings").downstream()
    | dg.AssetSelection.assets("content_features").upstream(),
    description="Train on history plus every accepted batch, build a challenger bundle and decide "
    "whether it replaces the champion.",
)

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 4 * * 1",  # Mondays 04:00 UTC
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrain weekly whatever the drift, so slow changes are picked up too.",
)

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _trained_batches(instance: dg.DagsterInstance) -> set[str]:
    entry = latest_metadata(instance, dg.AssetKey("training_ratings")).get("trained_batches")
    return set(entry.value) if entry is not None and isinstance(entry.value, list) else set()


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a retrain when a drift_report materialisation sets retrain_requested "
    "(drift past a threshold, or enough new ratings since the last training).",
)
def retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else 0
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRIFT_REPORT, after_storage_id=after), limit=1000, ascending=True
    ).records
    signals = []
    for record in records:
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        entry = metadata.get("retrain_requested")
        signals.append(
            DriftSignal(record.storage_id, record.partition_key or "", bool(entry and entry.value))
        )
    running = bool(
        signals
        and context.instance.get_runs(dg.RunsFilter(job_name=retrain_job.name, statuses=IN_FLIGHT), limit=1)
    )
    decision = decide_retrain(signals, _trained_batches(context.instance), running)
    cursor = str(decision.cursor) if decision.cursor is not None else context.cursor
    if not decision.batches:
        return dg.SensorResult(skip_reason=decision.reason, cursor=cursor)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"retrain-after-{decision.cursor}",
                tags={"recsys/trigger": "drift", "recsys/batches": ",".join(decision.batches)[:200]},
            )
        ],
        cursor=cursor,
    )
