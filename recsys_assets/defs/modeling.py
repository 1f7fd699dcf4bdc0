"""Stage 4, modelling: ALS with baselines and tuning, the FAISS item index, the production bundle."""

import time
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from mlflow.entities import Metric, Param
from pydantic import Field

from recsys_serving.confidence import Weighting

from ..modeling.index import ItemIndex, build_index, index_recall
from ..modeling.packaging import package_bundle
from ..modeling.recommenders import ALSParams
from ..modeling.training import TrainedModel, TrainingPlan, train_and_evaluate
from ..modeling.tuning import SearchSpace, Trial
from .metadata import markdown_table, upstream_source
from .plots import methods_chart
from .resources import BundleStore, MLflowTracking

MODEL_GROUP = "modeling"


class ALSModelConfig(dg.Config):
    factors: int = 64
    regularization: float = 0.1
    iterations: int = 15
    weighting: Literal["linear", "log", "bm25"] = "log"
    alpha: float = 4.0
    epsilon: float = 1.0
    seed: int = 42
    use_gpu: bool = False
    tune: bool = True
    search_factors: list[int] = [32, 64, 128]
    search_regularization: list[float] = [0.01, 0.1, 1.0]
    search_iterations: list[int] = [15]
    search_weighting: list[str] = ["bm25", "log", "linear"]
    search_alpha: list[float] = [1.0, 4.0, 16.0]
    n_trials: int = 12
    primary_metric: str = "ndcg@10"
    knn_neighbours: int = 100
    ease_l2: float = 500.0
    ease_max_items: int = 15_000
    bootstrap_samples: int = 1000

    def plan(self) -> TrainingPlan:
        weighting = Weighting(scheme=self.weighting, alpha=self.alpha, epsilon=self.epsilon)
        return TrainingPlan(
            als=ALSParams(
                factors=self.factors,
                regularization=self.regularization,
                iterations=self.iterations,
                weighting=weighting,
                seed=self.seed,
                use_gpu=self.use_gpu,
            ),
            tune=self.tune,
            space=SearchSpace(
                factors=tuple(self.search_factors),
                regularization=tuple(self.search_regularization),
                iterations=tuple(self.search_iterations),
                weighting=tuple(self.search_weighting),
                alpha=tuple(self.search_alpha),
                n_trials=self.n_trials,
                seed=self.seed,
            ),
            primary_metric=self.primary_metric,
            knn_neighbours=self.knn_neighbours,
            ease_l2=self.ease_l2,
            ease_max_items=self.ease_max_items,
            bootstrap_samples=self.bootstrap_samples,
        )


def _mlflow_metrics(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    # MLflow metric names may not contain '@'.
    return {prefix + name.replace("@", "_at_"): value for name, value in metrics.items()}


@dg.asset(group_name=MODEL_GROUP, kinds={"implicit", "mlflow"})
def als_model(
    context: dg.AssetExecutionContext,
    config: ALSModelConfig,
    temporal_splits: dict[str, pl.DataFrame],
    mlflow_tracking: MLflowTracking,
) -> TrainedModel:
    """implicit ALS, tuned on validation and refit on train+validation, evaluated on test beside
    most-popular, item-kNN (BM25) and EASE. Every run and tuning trial is tracked in MLflow."""
    plan = config.plan()
    source = upstream_source(context)
    client = mlflow_tracking.client()
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "data_source": source,
    }
    with mlflow_tracking.run("als_model", tags) as run_id:

        def on_trial(number: int, trial: Trial) -> None:
            context.log.info(
                f"trial {number + 1}: {plan.primary_metric}={trial.score:.4f} ({trial.seconds:.1f}s) "
                f"{trial.params.flat()}"
            )
            with mlflow_tracking.run(f"trial-{number + 1}", tags, parent_run_id=run_id) as trial_id:
                params = {k: str(v) for k, v in trial.params.flat().items()}
                client.log_batch(
                    trial_id,
                    params=[_param(k, v) for k, v in params.items()],
                    metrics=[_metric(k, v) for k, v in _mlflow_metrics(trial.metrics, "val_").items()],
                )

        def on_iteration(iteration: int, elapsed: float, loss: float | None) -> None:
            shown = "n/a" if loss is None else f"{loss:.5f}"
            context.log.info(f"ALS iteration {iteration + 1}: training loss {shown}, {elapsed:.1f}s")

        model = train_and_evaluate(
            temporal_splits,
            plan,
            on_trial=on_trial,
            on_iteration=on_iteration,
            info=context.log.info,
        )
        model.mlflow_run_id = run_id
        client.set_tag(run_id, "dataset_fingerprint", model.dataset_fingerprint)
        client.log_batch(
            run_id,
            params=[_param(k, str(v)) for k, v in model.params.flat().items()],
            metrics=[
                _metric(k, v)
                for result in model.evaluation.results
                for k, v in _mlflow_metrics(result.metrics, f"test_{result.method}_").items()
            ]
            + [_metric(k, float(v)) for k, v in model.split_stats.items()],
        )

    als = model.evaluation.get("als").metrics
    metadata = {
        "data_source": source,
        "dataset_fingerprint": model.dataset_fingerprint,
        "mlflow_run_id": run_id,
        "users": len(model.ids.user_ids),
        "items": len(model.ids.item_ids),
        "factors": model.params.factors,
        "fit_seconds": model.fit_seconds,
        "evaluation_users": model.evaluation.users,
        **{k: float(v) for k, v in model.split_stats.items()},
        **{f"als_{k}": v for k, v in als.items() if k.endswith("@10")},
        **{
            f"{r.method}_ndcg@10": r.metrics["ndcg@10"] for r in model.evaluation.results if r.method != "als"
        },
        "test_metrics": dg.MetadataValue.md(model.evaluation.markdown()),
        "ndcg_chart": dg.MetadataValue.md(methods_chart(model.evaluation)),
        "parameters": dg.MetadataValue.json(model.params.flat()),
    }
    if model.trials:
        trials = pl.DataFrame(
            [{**t.params.flat(), plan.primary_metric: t.score, "seconds": t.seconds} for t in model.trials]
        ).select(
            "factors",
            "regularization",
            "iterations",
            "weighting_scheme",
            "weighting_alpha",
            plan.primary_metric,
            "seconds",
        )
        metadata["tuning_trials"] = dg.MetadataValue.md(markdown_table(trials, 50))
    context.add_output_metadata(metadata)
    return model


def _param(key: str, value: str) -> Param:
    return Param(key, value)


def _metric(key: str, value: float) -> Metric:
    return Metric(key, float(value), int(time.time() * 1000), 0)


class ItemIndexConfig(dg.Config):
    kind: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: sqrt(items)
    ivf_nprobe: int = 16
    min_recall: float | None = None  # default: 1.0 for flat, 0.95 for approximate indexes


@dg.asset(group_name=MODEL_GROUP, kinds={"faiss"})
def faiss_index(
    context: dg.AssetExecutionContext, config: ItemIndexConfig, als_model: TrainedModel
) -> ItemIndex:
    """FAISS inner-product index over the ALS item factors, ids = movie ids (exact by default)."""
    settings = config.model_dump()
    index = build_index(
        als_model.item_factors,
        als_model.ids.item_ids,
        kind=config.kind,
        hnsw_m=config.hnsw_m,
        hnsw_ef_search=config.hnsw_ef_search,
        ivf_nlist=config.ivf_nlist or None,
        ivf_nprobe=config.ivf_nprobe,
    )
    bound = config.min_recall if config.min_recall is not None else (1.0 if config.kind == "flat" else 0.95)
    wrapped = ItemIndex.wrap(index, config.kind, bound, settings)
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "kind": config.kind,
            "vectors": int(index.ntotal),
            "dimensions": int(als_model.item_factors.shape[1]),
            "size_bytes": int(wrapped.data.nbytes),
            "min_recall": bound,
        }
    )
    return wrapped


@dg.asset_check(
    asset=faiss_index,
    blocking=True,
    additional_ins={"als_model": dg.AssetIn("als_model")},
    description="recall@10 of the index against exact inner-product search for up to 1,000 users; "
    "fails below the bound (1.0 for flat, 0.95 for HNSW/IVF unless configured).",
)
def faiss_index_recall(faiss_index: ItemIndex, als_model: TrainedModel) -> dg.AssetCheckResult:
    rng = np.random.default_rng(0)
    users = als_model.user_factors
    sample = users[rng.choice(len(users), size=min(1000, len(users)), replace=False)]
    recall = index_recall(faiss_index.load(), sample, als_model.item_factors, als_model.ids.item_ids, k=10)
    return dg.AssetCheckResult(
        passed=recall >= faiss_index.min_recall,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "recall@10": recall,
            "min_recall": faiss_index.min_recall,
            "queries": len(sample),
        },
        description=f"recall@10 = {recall:.4f} (bound {faiss_index.min_recall})",
    )


class BundleConfig(dg.Config):
    # Each known user's best unseen items, ranked once here so a server answers plain requests by
    # slicing an array (benchmarks/serve_bench.py); 8 bytes per user and listed item. 0: none.
    precomputed_top_n: int = Field(50, ge=0)


@dg.asset(group_name=MODEL_GROUP, kinds={"mlflow"})
def production_bundle(
    context: dg.AssetExecutionContext,
    config: BundleConfig,
    als_model: TrainedModel,
    faiss_index: ItemIndex,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
    temporal_splits: dict[str, pl.DataFrame],
    mlflow_tracking: MLflowTracking,
    bundle_store: BundleStore,
) -> dict:
    """An immutable, versioned bundle (factors, index, id maps, seen items, movies, popularity,
    fold-in settings, manifest with hashes), logged to the training run in MLflow and registered
    as a new version of the model with the ``challenger`` alias. ``promotion_decision`` decides
    whether it is served."""
    manifest = {
        "model": {
            "name": mlflow_tracking.registered_model,
            "algorithm": "implicit-als",
            "params": als_model.params.flat(),
        },
        "code_version": _code_version(),
        "dataset": {
            "source": upstream_source(context),
            "fingerprint": als_model.dataset_fingerprint,
        },
        "metrics": {r.method: r.metrics for r in als_model.evaluation.results},
        "index": {"kind": faiss_index.kind, **faiss_index.settings},
        "mlflow_run_id": als_model.mlflow_run_id,
        "dagster_run_id": context.run.run_id,
    }
    path = package_bundle(
        bundle_store.path(),
        als_model,
        raw_movies,
        training_ratings,
        temporal_splits,
        manifest,
        faiss_index.load(),
        top_n=config.precomputed_top_n,
    )
    version = path.name
    client = mlflow_tracking.client()
    client.log_artifacts(als_model.mlflow_run_id, str(path), artifact_path="bundle")
    client.set_tag(als_model.mlflow_run_id, "bundle_version", version)
    name = mlflow_tracking.registered_model
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        client.create_registered_model(name, description="implicit ALS on MovieLens, as production bundles")
    artifact_uri = client.get_run(als_model.mlflow_run_id).info.artifact_uri
    ndcg = als_model.test_metrics["ndcg@10"]
    registered = client.create_model_version(
        name,
        source=f"{artifact_uri}/bundle",
        run_id=als_model.mlflow_run_id,
        tags={
            "bundle_version": version,
            "bundle_path": str(path),
            "dataset_fingerprint": als_model.dataset_fingerprint,
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": context.asset_key.to_user_string(),
            "test_ndcg_at_10": f"{ndcg:.6f}",
        },
    )
    client.set_registered_model_alias(name, "challenger", registered.version)
    size = sum(f.stat().st_size for f in path.iterdir())
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "bundle_version": version,
            "bundle_path": dg.MetadataValue.path(str(path)),
            "size_mb": round(size / 1e6, 2),
            "registered_model": name,
            "model_version": int(registered.version),
            "alias": "challenger",
            "test_ndcg@10": ndcg,
            "precomputed_top_n": config.precomputed_top_n,
            "files": dg.MetadataValue.json({p.name: p.stat().st_size for p in sorted(path.iterdir())}),
        }
    )
    return {
        "version": version,
        "path": str(path),
        "model_version": registered.version,
        "mlflow_run_id": als_model.mlflow_run_id,
    }


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("movielens-recsys")
    except PackageNotFoundError:
        return "unknown"
