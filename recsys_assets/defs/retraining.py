"""When to retrain: after new batches ask for it (drift or enough new ratings), and weekly.

Both are on by default and can be switched off in the UI (Automation). A retrain re-materialises
everything from ``training_ratings`` down, ending in ``promotion_decision``.
"""

import dagster as dg

from .partitions import DRIFT_REPORT

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets("training_ratings").downstream(),
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


def _latest_trained_batch(instance: dg.DagsterInstance) -> str:
    event = instance.get_latest_materialization_event(dg.AssetKey("training_ratings"))
    entry = event.asset_materialization.metadata.get("latest_batch") if event else None
    return str(entry.value) if entry is not None else ""


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a retrain when a drift_report materialisation sets retrain_requested "
    "(drift past a threshold, or enough new ratings since the last training).",
)
def retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    after = int(context.cursor) if context.cursor else 0
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRIFT_REPORT, after_storage_id=after), limit=1000, ascending=True
    ).records
    if not records:
        return dg.SkipReason("no new drift reports")
    trained_through = _latest_trained_batch(context.instance)
    asking = []
    for record in records:
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        entry = metadata.get("retrain_requested")
        # A request is satisfied once a training included its batch (batch names sort by time).
        if entry is not None and entry.value and (record.partition_key or "") > trained_through:
            asking.append(record)
    newest = str(records[-1].storage_id)
    if not asking:
        return dg.SensorResult(
            skip_reason=f"{len(records)} drift report(s), none asks for a retrain on untrained batches",
            cursor=newest,
        )
    if context.instance.get_runs(dg.RunsFilter(job_name=retrain_job.name, statuses=IN_FLIGHT), limit=1):
        # Keep the cursor: the request is looked at again once the running retrain is done.
        return dg.SkipReason("a retrain is already running")
    batches = [r.partition_key for r in asking]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"retrain-after-{newest}",
                tags={"recsys/trigger": "drift", "recsys/batches": ",".join(b or "" for b in batches)[:200]},
            )
        ],
        cursor=newest,
    )
