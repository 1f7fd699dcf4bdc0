"""Stage 5, streaming: new rating batches are registered, validated, quarantined or accepted, and
compared with the training data. These assets make up the ``recsys_stream`` code location."""

import json
from dataclasses import asdict
from typing import Any

import dagster as dg
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from ..processing.frames import rating_period
from ..sources.formats import RATINGS_SCHEMA, DataFormatError
from ..storage import atomic_path
from ..streaming.drift import (
    DRIFT_MEASURES,
    RATING_BINS,
    DriftReport,
    DriftThresholds,
    genre_shares,
    measure_drift,
    rating_shares,
)
from ..streaming.registration import Delivered, plan_registrations
from ..streaming.retrain import window_batches
from ..streaming.store import BATCH_COLUMN, content_hash, read_batch
from ..validation.suites import ratings_expectations, validate
from .metadata import frame_metadata, markdown_table
from .partitions import RATING_BATCH, RATING_BATCHES, rating_batches
from .plots import png_markdown
from .resources import StreamStore
from .validation import report_result

STREAM_GROUP = "streaming"
BATCH_CHECK = "batch_expectations"


@dg.asset(
    key=RATING_BATCH,
    partitions_def=rating_batches,
    group_name=STREAM_GROUP,
    kinds={"polars", "great_expectations"},
    ins={"raw_movies": dg.AssetIn("raw_movies")},
    check_specs=[
        dg.AssetCheckSpec(
            BATCH_CHECK,
            asset=RATING_BATCH,
            blocking=True,
            description="The batch parses (file, line and problem named otherwise) and passes "
            "great-expectations: schema, nulls, rating range and step, known movie ids, timestamps, "
            "no duplicate events. A failing batch is moved to quarantine with a reason file.",
        )
    ],
)
def rating_batch(context: dg.AssetExecutionContext, raw_movies: pl.DataFrame, stream: StreamStore):
    """One delivered batch of ratings. Valid batches move to ``stream/accepted`` (the graph trains
    on them); invalid ones to ``stream/quarantine`` beside a JSON reason. Nothing is deleted."""
    folders = stream.folders()
    name = context.partition_key
    try:
        path = folders.locate(name)
    except FileNotFoundError as exc:
        raise dg.Failure(str(exc)) from None
    digest = content_hash(path)
    base: dict[str, Any] = {"batch_file": dg.MetadataValue.path(str(path)), "sha256": digest}
    try:
        batch = read_batch(path)
    except DataFormatError as exc:
        moved = folders.quarantine_batch(path, {"reason": "malformed file", "problems": str(exc)})
        context.log.error(f"batch {name} quarantined: {exc}")
        yield dg.Output(
            pl.DataFrame(schema=RATINGS_SCHEMA),
            metadata={**base, "status": "quarantined", "batch_file": dg.MetadataValue.path(str(moved))},
        )
        yield dg.AssetCheckResult(
            check_name=BATCH_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"malformed: {exc}",
            metadata={"problems": dg.MetadataValue.md(f"```\n{exc}\n```")},
        )
        return
    report = validate(
        batch, "rating_batch", ratings_expectations(raw_movies["movie_id"].to_list(), min_rows=0)
    )
    if report.success:
        moved = folders.accept(path)
        status = "accepted"
        if batch.is_empty():
            context.log.warning(f"batch {name} holds no ratings")
    else:
        failed = sorted({f"{f.expectation}({f.column})" for f in report.failures})
        moved = folders.quarantine_batch(
            path,
            {
                "reason": "failed validation",
                "failed_expectations": failed,
                "report": report.markdown(),
            },
        )
        status = "quarantined"
        context.log.error(f"batch {name} quarantined: {', '.join(failed)}")
    yield dg.Output(
        batch,
        metadata={
            **frame_metadata(batch, str(moved)),
            **base,
            "batch_file": dg.MetadataValue.path(str(moved)),
            "status": status,
            "users": batch["user_id"].n_unique(),
            "movies": batch["movie_id"].n_unique(),
            **rating_period(batch),
        },
    )
    yield report_result(report, check_name=BATCH_CHECK)


class DriftConfig(dg.Config):
    """When a batch asks for a retrain: drift beyond a threshold in the accumulated window of
    batches the current model has not seen, or enough new ratings."""

    volume_ratio: float = DriftThresholds.volume_ratio
    rating_psi: float = DriftThresholds.rating_psi
    item_psi: float = DriftThresholds.item_psi
    genre_psi: float = DriftThresholds.genre_psi
    new_user_share: float = DriftThresholds.new_user_share
    new_item_share: float = DriftThresholds.new_item_share
    min_rows_for_drift: int = 200  # smaller windows are reported but too noisy to act on
    retrain_after_new_share: float = 0.05  # new ratings as a share of the training ratings

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(**{f: getattr(self, f) for f in DriftThresholds.__dataclass_fields__})


def _drift_chart(
    reference: pl.DataFrame, batch: pl.DataFrame, window: pl.DataFrame, movies: pl.DataFrame
) -> str:
    figure, (ratings_axis, genre_axis) = plt.subplots(1, 2, figsize=(11, 3.2))
    width = 0.27
    positions = np.arange(len(RATING_BINS))
    for offset, (label, frame) in zip(
        (-width, 0.0, width), (("training", reference), ("batch", batch), ("window", window)), strict=True
    ):
        ratings_axis.bar(positions + offset, rating_shares(frame), width, label=label)
    ratings_axis.set_xticks(positions, [str(b) for b in RATING_BINS])
    ratings_axis.set_title("rating distribution")
    ratings_axis.set_ylabel("share of ratings")
    ratings_axis.legend()
    reference_genres = genre_shares(reference, movies)
    window_genres = genre_shares(window, movies)
    top = sorted(reference_genres, key=lambda genre: reference_genres[genre], reverse=True)[:10]
    genre_positions = np.arange(len(top))
    genre_axis.barh(genre_positions - 0.2, [reference_genres[g] for g in top], 0.4, label="training")
    genre_axis.barh(genre_positions + 0.2, [window_genres[g] for g in top], 0.4, label="window")
    genre_axis.set_yticks(genre_positions, top)
    genre_axis.invert_yaxis()
    genre_axis.set_title("genre mix (top 10 in training)")
    genre_axis.legend()
    return png_markdown(figure, "rating and genre distributions: training vs new data")


def _report_rows(batch: DriftReport, window: DriftReport) -> str:
    fields = ["rows", *DRIFT_MEASURES, "mean_rating"]
    table = pl.DataFrame(
        {
            "measure": fields,
            "batch": [float(getattr(batch, f)) for f in fields],
            "window": [float(getattr(window, f)) for f in fields],
        }
    )
    return markdown_table(table, len(fields))


@dg.asset(
    partitions_def=rating_batches,
    group_name=STREAM_GROUP,
    kinds={"polars"},
    ins={
        "rating_batch": dg.AssetIn(RATING_BATCH),
        "raw_movies": dg.AssetIn("raw_movies"),
        "training_ratings": dg.AssetIn("training_ratings"),
    },
)
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    rating_batch: pl.DataFrame,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
    stream: StreamStore,
) -> dict:
    """This batch, and the window of all accepted batches the current model has not trained on,
    against the training ratings: volume, rating distribution (PSI, KL), item popularity (PSI, KL),
    new users and items, genre mix. Crossing a threshold sets ``retrain_requested``, which the
    retrain sensor in the main code location acts on."""
    folders = stream.folders()
    name = context.partition_key
    trained = set(training_ratings[BATCH_COLUMN].drop_nulls().unique().to_list())
    unseen = window_batches(
        context.instance.get_dynamic_partitions(RATING_BATCHES),
        set(folders.accepted_names()),
        trained,
        name,
    )
    window = folders.accepted_ratings(unseen) if unseen else rating_batch
    thresholds = config.thresholds()
    batch_drift = measure_drift(training_ratings, rating_batch, raw_movies, thresholds)
    window_drift = measure_drift(training_ratings, window, raw_movies, thresholds)

    reasons = []
    if window_drift.drifted and len(window) >= config.min_rows_for_drift:
        reasons += [f"window: {r}" for r in window_drift.reasons]
    needed = config.retrain_after_new_share * len(training_ratings)
    if len(window) >= needed:
        reasons.append(
            f"{len(window):,} new ratings in {len(unseen)} batches >= "
            f"{config.retrain_after_new_share:.0%} of {len(training_ratings):,} training ratings"
        )
    report = {
        "batch": name,
        "window_batches": unseen,
        "batch_drift": batch_drift.to_dict(),
        "window_drift": window_drift.to_dict(),
        "thresholds": {**asdict(thresholds), "min_rows_for_drift": config.min_rows_for_drift},
        "retrain_after_new_ratings": needed,
        "retrain_requested": bool(reasons),
        "retrain_reasons": reasons,
    }
    json_path = folders.drift / f"{name}.json"
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(report, indent=2, default=float) + "\n")

    verdict = (
        "**Retrain requested:**\n" + "\n".join(f"- {r}" for r in reasons)
        if reasons
        else "No retrain needed: no threshold crossed."
    )
    markdown = "\n\n".join(
        [
            f"### Drift of batch `{name}` against {len(training_ratings):,} training ratings",
            f"Window: {len(unseen)} accepted batch(es) not yet trained on, {len(window):,} ratings.",
            verdict,
            _report_rows(batch_drift, window_drift),
            "Batch-level threshold crossings: " + ("; ".join(batch_drift.reasons) or "none"),
            _drift_chart(training_ratings, rating_batch, window, raw_movies),
        ]
    )
    numeric = {
        f"{scope}_{field}": float(getattr(drift, field))
        for scope, drift in (("batch", batch_drift), ("window", window_drift))
        for field in DRIFT_MEASURES
    }
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(markdown),
            "report_json": dg.MetadataValue.path(str(json_path)),
            "batch_rows": len(rating_batch),
            "window_rows": len(window),
            "window_batches": len(unseen),
            "retrain_requested": bool(reasons),
            "retrain_reasons": dg.MetadataValue.json(reasons),
            **numeric,
        }
    )
    return report


ingest_batch_job = dg.define_asset_job(
    "ingest_rating_batch",
    selection=dg.AssetSelection.assets(RATING_BATCH, "drift_report", "batch_replay_evaluation"),
    partitions_def=rating_batches,
    description="Validate one batch, accept or quarantine it, measure its drift, and score the "
    "traffic replayed before it against its ratings.",
)


@dg.sensor(
    job=ingest_batch_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new file in stream/incoming as a rating_batches partition and "
    "requests its ingestion. A file whose bytes match a registered batch is a re-delivery: it is "
    "set aside in stream/duplicates, never ingested twice.",
)
def rating_batch_sensor(context: dg.SensorEvaluationContext, stream: StreamStore) -> dg.SensorResult:
    folders = stream.folders()
    pending = {path.stem: path for path in folders.pending()}
    plan = plan_registrations(
        [Delivered(stem, content_hash(path)) for stem, path in pending.items()],
        known=json.loads(context.cursor) if context.cursor else {},
        registered=set(context.instance.get_dynamic_partitions(RATING_BATCHES)),
        ingested=_ingested_digests(context.instance),
    )
    for file, original in plan.redelivered:
        moved = folders.set_aside_duplicate(pending[file.stem], original)
        context.log.info(f"{file.stem} re-delivers batch {original}: set aside in {moved.parent}")
    requests = []
    for file, partition in plan.register + plan.waiting:
        path = pending[file.stem]
        if partition != file.stem:  # a corrected delivery under a taken name
            path.rename(path.with_name(f"{partition}{path.suffix}"))
        requests.append(dg.RunRequest(partition_key=partition, run_key=f"{partition}:{file.digest[:16]}"))
    cursor = json.dumps(plan.known)
    if not requests:
        return dg.SensorResult(skip_reason="no new batch files", cursor=cursor)
    new_partitions = [partition for _, partition in plan.register]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[rating_batches.build_add_request(new_partitions)]
        if new_partitions
        else [],
        cursor=cursor,
    )


def _ingested_digests(instance: dg.DagsterInstance) -> dict[str, str]:
    """partition -> sha256 of the file each ingested batch was read from (its latest ingestion)."""
    digests: dict[str, str] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RATING_BATCH), limit=1000, cursor=cursor, ascending=True
        )
        for record in page.records:
            entry = (
                record.asset_materialization.metadata.get("sha256") if record.asset_materialization else None
            )
            if entry is not None and record.partition_key:
                digests[record.partition_key] = str(entry.value)
        if not page.has_more:
            return digests
        cursor = page.cursor
