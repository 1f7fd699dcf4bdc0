"""Stage 4, modelling: ALS with baselines and tuning, the FAISS item index, the production bundle."""

import time
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from mlflow.entities import Metric, Param
from pydantic import Field

from recsys_serving.confidence import Weighting

from ..modeling.content import ContentModelRules
from ..modeling.index import ItemIndex, build_index, index_recall
from ..modeling.packaging import package_bundle
from ..modeling.recommenders import ALSParams
from ..modeling.training import TrainedModel, TrainingPlan, train_and_evaluate
from ..modeling.tuning import SearchSpace, Trial
from ..processing.content import ContentVectors
from .metadata import markdown_table, upstream_source
from .plots import methods_chart
from .preparation import recorded_interaction_rules
from .resources import BundleStore, MLflowTracking

MODEL_GROUP = "modeling"


# The defaults of the pure training plan: the config below only mirrors them.
PLAN, ALS_DEFAULTS, SPACE = TrainingPlan(), ALSParams(), SearchSpace()


class ALSModelConfig(dg.Config):
    """ALS parameters (used as given when ``tune`` is off), the search over every servable kind,
    and which kind the bundle serves (``model_kind: auto`` = the best on validation)."""

    model_kind: Literal["auto", "als", "ease", "item_knn"] = PLAN.model_kind
    factors: int = ALS_DEFAULTS.factors
    regularization: float = ALS_DEFAULTS.regularization
    iterations: int = ALS_DEFAULTS.iterations
    weighting: Literal["linear", "log", "bm25"] = ALS_DEFAULTS.weighting.scheme
    alpha: float = ALS_DEFAULTS.weighting.alpha
    epsilon: float = ALS_DEFAULTS.weighting.epsilon
    seed: int = ALS_DEFAULTS.seed
    use_gpu: bool = ALS_DEFAULTS.use_gpu
    tune: bool = PLAN.tune
    tuning_budget_seconds: float = Field(SPACE.budget_seconds, gt=0)
    max_trials: int = Field(SPACE.max_trials, ge=1)  # ALS trials
    baseline_trials: int = Field(SPACE.baseline_trials, ge=1)  # trials of each item-item kind
    tuning_users: int = Field(SPACE.max_users, ge=10)
    search_factors: list[int] = list(SPACE.factors)
    # Ranges are [low, high], searched on a log scale.
    search_regularization: list[float] = list(SPACE.regularization)
    search_alpha: list[float] = list(SPACE.alpha)
    search_weighting: list[str] = list(SPACE.weighting)
    search_ease_l2: list[float] = list(SPACE.ease_l2)
    search_knn_neighbours: list[int] = list(SPACE.knn_neighbours)
    primary_metric: str = PLAN.primary_metric
    knn_neighbours: int = PLAN.knn_neighbours
    ease_l2: float = PLAN.ease_l2
    ease_max_items: int = PLAN.ease_max_items
    ease_neighbours: int = Field(PLAN.ease_neighbours, ge=1)
    bootstrap_samples: int = PLAN.bootstrap_samples
    test_users: int = Field(PLAN.test_users or 0, ge=0)  # 0: every test user
    warm_refit_iterations: int = Field(PLAN.warm_refit_iterations or 0, ge=0)  # 0: a fresh final fit

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
                regularization=_range(self.search_regularization, "search_regularization"),
                alpha=_range(self.search_alpha, "search_alpha"),
                weighting=tuple(self.search_weighting),
                iterations=self.iterations,
                ease_l2=_range(self.search_ease_l2, "search_ease_l2"),
                knn_neighbours=_range(self.search_knn_neighbours, "search_knn_neighbours"),
                budget_seconds=self.tuning_budget_seconds,
                max_trials=self.max_trials,
                baseline_trials=self.baseline_trials,
                max_users=self.tuning_users,
                seed=self.seed,
            ),
            primary_metric=self.primary_metric,
            model_kind=self.model_kind,
            knn_neighbours=self.knn_neighbours,
            ease_l2=self.ease_l2,
            ease_max_items=self.ease_max_items,
            ease_neighbours=self.ease_neighbours,
            bootstrap_samples=self.bootstrap_samples,
            validation_users=self.tuning_users,
            test_users=self.test_users or None,
            warm_refit_iterations=self.warm_refit_iterations or None,
        )


def _range(values: list, name: str) -> tuple:
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"{name} must be [low, high], got {values}")
    return (values[0], values[1])


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
    """The served model and its evidence: ALS, item-kNN and EASE tuned on validation within a time
    budget (Optuna), the kind that validates best chosen for serving, every method refit on
    train+validation and evaluated on test beside most-popular. ALS is always trained (the FAISS
    index is built from it). Every run and tuning trial is tracked in MLflow."""
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
                f"trial {number + 1} ({trial.kind}, {trial.state}): {plan.primary_metric}={trial.score:.4f} "
                f"({trial.seconds:.1f}s) {trial.params}"
            )
            trial_tags = {**tags, "model_kind": trial.kind, "trial_state": trial.state}
            with mlflow_tracking.run(
                f"trial-{number + 1}-{trial.kind}", trial_tags, parent_run_id=run_id
            ) as trial_id:
                client.log_batch(
                    trial_id,
                    params=[_param(k, str(v)) for k, v in {"kind": trial.kind, **trial.params}.items()],
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
        client.set_tag(run_id, "model_kind", model.kind)
        client.log_batch(
            run_id,
            params=[_param(k, str(v)) for k, v in model.params.flat().items()]
            + [_param("served_kind", model.kind)]
            + [_param(f"served_{k}", str(v)) for k, v in model.kind_params.items() if model.kind != "als"],
            metrics=[
                _metric(k, v)
                for result in model.evaluation.results
                for k, v in _mlflow_metrics(result.metrics, f"test_{result.method}_").items()
            ]
            + [_metric(k, float(v)) for k, v in model.split_stats.items()],
        )

    context.add_output_metadata(model_metadata(model, plan.primary_metric, source, run_id))
    return model


def model_metadata(model: TrainedModel, metric: str, source: str, run_id: str) -> dict:
    """What the UI shows for a trained model: the served kind and why, every method's test
    metrics, and the search (budget, time, trials)."""
    served = model.test_metrics
    check = model.selection["test_check"]
    metadata: dict = {
        "data_source": source,
        "dataset_fingerprint": model.dataset_fingerprint,
        "mlflow_run_id": run_id,
        "served_kind": model.kind,
        "selection_reason": model.selection["reason"],
        "served_parameters": dg.MetadataValue.json(model.kind_params),
        **{f"validation_{kind}_{metric}": value for kind, value in model.selection["validation"].items()},
        **{f"served_{k}": v for k, v in served.items() if k.endswith("@10")},
        "served_intervals": dg.MetadataValue.json(
            {
                k: [float(x) for x in v]
                for k, v in model.evaluation.get(model.kind).intervals.items()
                if k.endswith("@10")
            }
        ),
        "test_confirms_choice": check["confirmed"],
        "test_check": dg.MetadataValue.json(check),
        "users": len(model.ids.user_ids),
        "items": len(model.ids.item_ids),
        "factors": model.params.factors,
        "fit_seconds": model.fit_seconds,
        "evaluation_users": model.evaluation.users,
        **{k: float(v) for k, v in model.split_stats.items()},
        **{f"{r.method}_{metric}": r.metrics[metric] for r in model.evaluation.results},
        "test_metrics": dg.MetadataValue.md(model.evaluation.markdown()),
        "ndcg_chart": dg.MetadataValue.md(methods_chart(model.evaluation)),
        "als_parameters": dg.MetadataValue.json(model.params.flat()),
    }
    if model.search:
        search = model.search
        metadata.update(
            {
                "tuning_budget_seconds": search.budget_seconds,
                "tuning_seconds": round(search.seconds, 1),
                "tuning_trials": len(search.trials),
                "tuning_pruned_trials": sum(t.state == "pruned" for t in search.trials),
                "tuning_validation_users": search.users,
                "best_trials": dg.MetadataValue.json(
                    {kind: {"score": t.score, **t.params} for kind, t in search.best.items()}
                ),
                "trials": dg.MetadataValue.md(trials_table(search.trials, metric)),
            }
        )
    return metadata


def trials_table(trials: list[Trial], metric: str) -> str:
    rows = [
        {
            "kind": t.kind,
            "state": t.state,
            metric: round(t.score, 5),
            "seconds": round(t.seconds, 2),
            "parameters": ", ".join(
                f"{k.removeprefix('weighting_')}={v:.4g}"
                if isinstance(v, float)
                else f"{k.removeprefix('weighting_')}={v}"
                for k, v in t.params.items()
                if k not in ("seed", "use_gpu", "weighting_epsilon", "weighting_bm25_k1", "weighting_bm25_b")
            ),
        }
        for t in sorted(trials, key=lambda t: -t.score)
    ]
    return markdown_table(pl.DataFrame(rows), 60)


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


CONTENT_MODEL = ContentModelRules()


class BundleConfig(dg.Config):
    # Each known user's best unseen items, ranked once here so a server answers plain requests by
    # slicing an array (benchmarks/serve_bench.py); 8 bytes per user and listed item. 0: none.
    precomputed_top_n: int = Field(50, ge=0)
    # Movies the model does not score (new, rarely rated) get into the bundle scored from content.
    cold_items: bool = True
    content_ridge_l2: float = Field(CONTENT_MODEL.ridge_l2, gt=0)
    content_neighbours: int = Field(CONTENT_MODEL.neighbours, ge=1)

    def content_rules(self) -> ContentModelRules:
        return ContentModelRules(ridge_l2=self.content_ridge_l2, neighbours=self.content_neighbours)


@dg.asset(group_name=MODEL_GROUP, kinds={"mlflow"})
def production_bundle(
    context: dg.AssetExecutionContext,
    config: BundleConfig,
    als_model: TrainedModel,
    faiss_index: ItemIndex,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
    temporal_splits: dict[str, pl.DataFrame],
    content_features: pl.DataFrame,
    mlflow_tracking: MLflowTracking,
    bundle_store: BundleStore,
) -> dict:
    """An immutable, versioned bundle of the chosen model kind (ALS factors and the FAISS index, or
    the sparse EASE / item-kNN matrix), with id maps, seen and liked items, movies, popularity,
    precomputed lists, the cold part (movies the model does not score, scored from content) and a
    manifest with hashes; logged to the training run in MLflow and
    registered as a new version of the model with the ``challenger`` alias.
    ``promotion_decision`` decides whether it is served."""
    run_id = als_model.mlflow_run_id
    if run_id is None:  # the bundle is logged to, and registered from, the training run
        raise dg.Failure("als_model carries no MLflow run id: materialise als_model again")
    manifest = {
        "model": {
            "name": mlflow_tracking.registered_model,
            "kind": als_model.kind,
            "params": als_model.kind_params,
            "selection": als_model.selection,
        },
        "code_version": _code_version(),
        "dataset": {
            "source": upstream_source(context),
            "fingerprint": als_model.dataset_fingerprint,
        },
        "metrics": {r.method: r.metrics for r in als_model.evaluation.results},
        "mlflow_run_id": run_id,
        "dagster_run_id": context.run.run_id,
    }
    if als_model.kind == "als":
        manifest["index"] = {"kind": faiss_index.kind, **faiss_index.settings}
    path = package_bundle(
        bundle_store.path(),
        als_model,
        raw_movies,
        training_ratings,
        temporal_splits,
        manifest,
        faiss_index.load(),
        top_n=config.precomputed_top_n,
        rules=recorded_interaction_rules(context.instance),
        content=ContentVectors.from_frame(content_features) if config.cold_items else None,
        content_rules=config.content_rules(),
    )
    version = path.name
    client = mlflow_tracking.client()
    client.log_artifacts(run_id, str(path), artifact_path="bundle")
    client.set_tag(run_id, "bundle_version", version)
    name = mlflow_tracking.registered_model
    artifact_uri = client.get_run(run_id).info.artifact_uri
    ndcg = als_model.test_metrics["ndcg@10"]
    registered = mlflow_tracking.register_bundle(
        f"{artifact_uri}/bundle",
        run_id,
        {
            "bundle_version": version,
            "bundle_path": str(path),
            "dataset_fingerprint": als_model.dataset_fingerprint,
            "model_kind": als_model.kind,
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": context.asset_key.to_user_string(),
            "test_ndcg_at_10": f"{ndcg:.6f}",
        },
    )
    client.set_registered_model_alias(name, "challenger", registered)
    size = sum(f.stat().st_size for f in path.iterdir())
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "bundle_version": version,
            "model_kind": als_model.kind,
            "bundle_path": dg.MetadataValue.path(str(path)),
            "size_mb": round(size / 1e6, 2),
            "registered_model": name,
            "model_version": int(registered),
            "alias": "challenger",
            "test_ndcg@10": ndcg,
            "precomputed_top_n": config.precomputed_top_n,
            "cold_items": len(np.load(path / "cold_ids.npy")) if config.cold_items else 0,
            "files": dg.MetadataValue.json({p.name: p.stat().st_size for p in sorted(path.iterdir())}),
        }
    )
    return {
        "version": version,
        "path": str(path),
        "model_version": registered,
        "mlflow_run_id": als_model.mlflow_run_id,
        "model_kind": als_model.kind,
    }


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("movielens-recsys")
    except PackageNotFoundError:
        return "unknown"
