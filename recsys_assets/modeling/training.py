"""The training protocol: tune ALS on validation, refit on train+validation, evaluate every method
on test with the same users, items and bootstrap resamples."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .evaluation import Evaluation, evaluate
from .matrices import IdMap, fingerprint, to_csr
from .recommenders import ALS, EASE, ALSParams, ItemKNN, MostPopular, Recommender
from .tuning import SearchSpace, Trial, sample_trials, search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    als: ALSParams = field(default_factory=ALSParams)
    tune: bool = True
    space: SearchSpace = field(default_factory=SearchSpace)
    primary_metric: str = "ndcg@10"
    knn_neighbours: int = 100
    ease_l2: float = 500.0
    ease_max_items: int = 15_000
    bootstrap_samples: int = 1000


@dataclass
class TrainedModel:
    ids: IdMap
    user_factors: np.ndarray
    item_factors: np.ndarray
    params: ALSParams
    length_norm: np.ndarray | None
    evaluation: Evaluation
    trials: list[Trial]
    dataset_fingerprint: str
    split_stats: dict
    fit_seconds: float
    mlflow_run_id: str | None = None

    @property
    def test_metrics(self) -> dict[str, float]:
        return self.evaluation.get("als").metrics


def train_and_evaluate(
    splits: dict[str, pl.DataFrame],
    plan: TrainingPlan,
    on_trial: Callable[[int, Trial], None] | None = None,
    on_iteration: Callable[[int, float, float | None], None] | None = None,
    info: Callable[[str], None] = log.info,
) -> TrainedModel:
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    if train.is_empty() or test.is_empty():
        raise ValueError("training needs non-empty train and test splits")

    trials: list[Trial] = []
    params = plan.als
    if plan.tune and not validation.is_empty():
        search_ids = IdMap.from_frame(train)
        candidates = sample_trials(plan.space, plan.als)
        info(f"tuning ALS: {len(candidates)} trials on the validation split ({plan.primary_metric})")
        trials = search(
            to_csr(train, search_ids),
            to_csr(validation, search_ids),
            candidates,
            metric=plan.primary_metric,
            on_trial=on_trial,
        )
        params = trials[0].params
        info(f"best trial: {plan.primary_metric}={trials[0].score:.4f} with {params.flat()}")

    fitted = pl.concat([train, validation])
    ids = IdMap.from_frame(fitted)
    x_fit, x_test = to_csr(fitted, ids), to_csr(test, ids)
    known_users = test["user_id"].is_in(ids.user_ids.tolist())
    known_items = test["movie_id"].is_in(ids.item_ids.tolist())
    split_stats = {
        "test_users": test["user_id"].n_unique(),
        "cold_test_users": test.filter(~known_users)["user_id"].n_unique(),
        "test_interactions_unknown_items": int((~known_items).sum()),
        "fit_interactions": len(fitted),
    }
    split_stats["cold_user_share"] = split_stats["cold_test_users"] / max(split_stats["test_users"], 1)

    als = ALS(params, on_iteration=on_iteration)
    models: list[Recommender] = [als, MostPopular(), ItemKNN(plan.knn_neighbours)]
    skipped = {}
    ease = EASE(plan.ease_l2, plan.ease_max_items)
    reason = ease.too_large(x_fit.shape[1])
    if reason:
        skipped["ease"] = reason
        info(reason)
    else:
        models.append(ease)
    fit_seconds = 0.0
    for model in models:
        started = time.perf_counter()
        model.fit(x_fit)
        elapsed = time.perf_counter() - started
        fit_seconds = elapsed if model is als else fit_seconds
        info(f"fitted {model.name} on {x_fit.shape[0]:,} users x {x_fit.shape[1]:,} items in {elapsed:.1f}s")
    evaluation = evaluate(models, x_fit, x_test, n_boot=plan.bootstrap_samples)
    evaluation.skipped = skipped
    return TrainedModel(
        ids=ids,
        user_factors=als.user_factors,
        item_factors=als.item_factors,
        params=params,
        length_norm=als.length_norm,
        evaluation=evaluation,
        trials=trials,
        dataset_fingerprint=fingerprint(fitted.select("user_id", "movie_id", "weight", "timestamp")),
        split_stats=split_stats,
        fit_seconds=fit_seconds,
    )
