"""Between full retrains: the catalogue as it is now (new movies in ``movies.csv``, movies first
rated in accepted stream batches) added to the served bundle's cold part, without retraining."""

import dagster as dg
import numpy as np
import polars as pl

from recsys_serving.bundle import load_bundle
from recsys_serving.promotion import promoted_version

from ..champion import make_champion
from ..modeling.content import cold_items
from ..modeling.packaging import refresh_bundle
from ..modeling.promotion import settle_refresh
from ..processing.content import ContentVectors
from .metadata import markdown_table, upstream_source
from .modeling import BundleConfig
from .promotion import check_states
from .resources import BundleStore, MLflowTracking


@dg.asset(group_name="promotion", kinds={"faiss", "mlflow"}, deps=["promotion_decision"])
def catalogue_refresh(
    context: dg.AssetExecutionContext,
    config: BundleConfig,
    raw_movies: pl.DataFrame,
    content_features: pl.DataFrame,
    training_ratings: pl.DataFrame,
    mlflow_tracking: MLflowTracking,
    bundle_store: BundleStore,
) -> dict:
    """The served bundle with its cold part rebuilt from the current catalogue and content: a new
    immutable version (registered in MLflow) that keeps the champion's model, users and lists, and
    replaces it when the blocking checks pass and it is still the champion. Skipped when nothing
    is served or the catalogue did not change. Runs last in a full build, and on its own in
    ``catalogue_refresh_job`` (daily) without touching the model."""
    root = bundle_store.path()
    champion = promoted_version(root)
    if champion is None:
        context.add_output_metadata(
            {
                "data_source": upstream_source(context),
                "outcome": "skipped",
                "reason": "no bundle is served yet",
            }
        )
        return {"outcome": "skipped", "reason": "no bundle is served yet"}
    base = load_bundle(root / champion)
    content = ContentVectors.from_frame(content_features)
    scorer = (
        {"item_factors": base.item_factors}
        if base.kind == "als"
        else {"item_similarity": base.item_similarity}
    )
    cold = cold_items(
        content, base.item_ids, base.user_ids, training_ratings, rules=config.content_rules(), **scorer
    )
    before = base.cold.movie_ids if base.cold is not None else np.empty(0, dtype=np.int64)
    added = np.setdiff1d(cold.movie_ids, before)
    if base.cold is not None and added.size == 0 and np.array_equal(base.cold.content, cold.content):
        reason = f"the catalogue of {champion} is current"
        context.add_output_metadata(
            {
                "data_source": upstream_source(context),
                "outcome": "skipped",
                "reason": reason,
                "cold_items": len(before),
            }
        )
        return {"outcome": "skipped", "reason": reason}
    details = {"added_cold_items": int(added.size), "cold_items": len(cold.movie_ids)}
    path = refresh_bundle(root, base, raw_movies, cold, details)
    version = path.name
    registered = mlflow_tracking.register_bundle(
        str(path),
        base.manifest.get("mlflow_run_id"),
        {
            "bundle_version": version,
            "bundle_path": str(path),
            "model_kind": base.kind,
            "refreshed_from": champion,
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": context.asset_key.to_user_string(),
        },
    )
    verdict = settle_refresh(champion, promoted_version(root), check_states(context.instance))
    if verdict.promote:
        make_champion(
            root, mlflow_tracking.client(), version, verdict.reason, model=mlflow_tracking.registered_model
        )
    outcome = "promoted" if verdict.promote else "rejected"
    context.log.info(f"catalogue refresh {version} of {champion}: {outcome} ({verdict.reason})")
    new_movies = raw_movies.filter(pl.col("movie_id").is_in(added.tolist())).select(
        "movie_id", "title", "year", "genres"
    )
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "outcome": outcome,
            "reason": verdict.reason,
            "refreshed_from": champion,
            "bundle_version": version,
            "model_version": int(registered),
            "bundle_path": dg.MetadataValue.path(str(path)),
            "cold_items": len(cold.movie_ids),
            "added_cold_items": int(added.size),
            "added_movies": dg.MetadataValue.md(markdown_table(new_movies, 20)),
        }
    )
    return {"outcome": outcome, "reason": verdict.reason, "version": version, "path": str(path), **details}


catalogue_refresh_job = dg.define_asset_job(
    "catalogue_refresh_job",
    selection=dg.AssetSelection.assets(
        "raw_movies", "raw_tags", "tag_genome", "content_features", "training_ratings", "catalogue_refresh"
    ),
    description="New movies into the served bundle (content-scored cold items), without retraining.",
)

daily_catalogue_refresh = dg.ScheduleDefinition(
    name="daily_catalogue_refresh",
    job=catalogue_refresh_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: movies added to movies.csv or first rated in accepted batches become "
    "recommendable (from their content) before the next retrain.",
)
