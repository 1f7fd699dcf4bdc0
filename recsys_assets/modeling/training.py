"""The training protocol: tune every servable kind on validation, choose the kind that validates
best, refit every method on train+validation, and evaluate them all on test with the same users,
items and bootstrap resamples, so the test table confirms (or questions) the choice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_serving.confidence import Weighting

from .evaluation import Evaluation, evaluate, evaluation_users
from .matrices import IdMap, fingerprint, to_csr
from .recommenders import ALS, EASE, ALSParams, ItemKNN, MostPopular, Recommender, SparseItemItem
from .tuning import SearchResult, SearchSpace, Trial, search

log = logging.getLogger(__name__)

ModelKind = Literal["auto", "als", "ease", "item_knn"]
SERVABLE = ("als", "ease", "item_knn")


@dataclass(frozen=True)
class TrainingPlan:
    als: ALSParams = field(default_factory=ALSParams)
    tune: bool = True
    space: SearchSpace = field(default_factory=SearchSpace)
    primary_metric: str = "ndcg@10"
    # "auto": serve the kind with the best validation score; otherwise serve this kind.
    model_kind: ModelKind = "auto"
    knn_neighbours: int = 100
    ease_l2: float = 100.0
    ease_max_items: int = 15_000
    # Each item's strongest EASE weights kept in the served matrix (the full matrix is dense).
    ease_neighbours: int = 500
    bootstrap_samples: int = 1000
    validation_users: int = 10_000  # scored when choosing the kind without a search
    # Test users every method is evaluated on (one seeded sample, the same for all; None: all).
    # Scoring every test user against every item dominated als_model at ml-25m size (7 of its
    # 14 minutes for 161k users); 50,000 users keep the intervals narrow.
    test_users: int | None = 50_000
    # The final ALS fit on train+validation starts from the factors fitted on train (the chosen
    # point's) and runs this many iterations; None: a fresh fit of the configured iterations.
    warm_refit_iterations: int | None = 5


@dataclass
class TrainedModel:
    ids: IdMap
    kind: str  # the kind the bundle serves
    user_factors: np.ndarray  # ALS, always trained: the FAISS index is built from its item factors
    item_factors: np.ndarray
    params: ALSParams
    length_norm: np.ndarray | None
    evaluation: Evaluation
    dataset_fingerprint: str
    split_stats: dict
    fit_seconds: float
    item_similarity: sp.csr_matrix | None = None  # the served item-item matrix (ease, item_knn)
    binary_input: bool = False
    kind_params: dict = field(default_factory=dict)  # the served kind's parameters
    selection: dict = field(default_factory=dict)  # validation scores per kind and the reason
    search: SearchResult | None = None
    mlflow_run_id: str | None = None

    @property
    def trials(self) -> list[Trial]:
        return self.search.trials if self.search else []

    @property
    def test_metrics(self) -> dict[str, float]:
        """The served model's test metrics."""
        return self.evaluation.get(self.kind).metrics


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

    als_params, knn_neighbours, ease_l2 = plan.als, plan.knn_neighbours, plan.ease_l2
    result: SearchResult | None = None
    warm_from: tuple[IdMap, ALS] | None = None  # the ALS fitted on train, where the kinds were compared
    validation_scores: dict[str, float] = {}
    kinds = SERVABLE if plan.model_kind == "auto" else (plan.model_kind,)
    if not validation.is_empty() and (plan.tune or plan.model_kind == "auto"):
        search_ids = IdMap.from_frame(train)
        x_train, x_validation = to_csr(train, search_ids), to_csr(validation, search_ids)
        # The search and the choice between kinds see different validation users: the best of
        # many ALS trials is optimistically scored on the users it was picked on (more trials,
        # more optimism), so kinds are compared on users no trial was scored on.
        tuning_users, choice_users = _halves(evaluation_users(x_train, x_validation), plan.space.seed)
        if plan.tune:
            info(
                f"tuning {', '.join(kinds)} on the validation split ({plan.primary_metric}), "
                f"budget {plan.space.budget_seconds:.0f}s"
            )
            result = search(
                x_train,
                x_validation,
                plan.space,
                plan.als,
                metric=plan.primary_metric,
                kinds=kinds,
                ease_max_items=plan.ease_max_items,
                on_trial=on_trial,
                users=tuning_users,
            )
            best = result.best
            if "als" in best:
                als_params = _als_params(plan.als, best["als"].params)
            if "item_knn" in best:
                knn_neighbours = int(best["item_knn"].params["neighbours"])
            if "ease" in best:
                ease_l2 = float(best["ease"].params["l2"])
            info(
                f"search: {len(result.trials)} trials in {result.seconds:.0f}s; best per kind "
                + ", ".join(f"{k} {t.score:.4f}" for k, t in best.items())
            )
        # the search's best trial of each kind, fitted on the same matrix: not fitted again
        fitted = result.take_fitted() if result else {}
        if len(kinds) > 1:
            candidates = _models(plan, kinds, als_params, knn_neighbours, ease_l2, x_train.shape[1])
            for number, model in enumerate(candidates):
                if model.name not in fitted:
                    model.fit(x_train)
                    fitted[model.name] = model
                    continue
                candidates[number] = model = fitted[model.name]
                done = result.best[model.name].iterations if result else None
                if isinstance(model, ALS) and done and done < model.params.iterations:
                    model.fit(
                        x_train,
                        start=(model.user_factors, model.item_factors),
                        iterations=model.params.iterations - done,
                    )
            scored = evaluate(
                candidates,
                x_train,
                x_validation,
                n_boot=0,
                max_users=plan.validation_users,
                users=choice_users,
            )
            validation_scores = {r.method: r.metrics[plan.primary_metric] for r in scored.results}
        if isinstance(searched_als := fitted.get("als"), ALS):
            warm_from = (search_ids, searched_als)

    fit_frame = pl.concat([train, validation])
    ids = IdMap.from_frame(fit_frame)
    x_fit, x_test = to_csr(fit_frame, ids), to_csr(test, ids)
    split_stats = _split_stats(test, fit_frame, ids)

    als = ALS(als_params, on_iteration=on_iteration)
    knn = ItemKNN(knn_neighbours)
    ease = EASE(ease_l2, plan.ease_max_items)
    models: list[Recommender] = [als, MostPopular(), knn]
    skipped = {}
    reason = ease.too_large(x_fit.shape[1])
    if reason:
        skipped["ease"] = reason
        info(reason)
    else:
        models.append(ease)
    fit_seconds = 0.0
    for model in models:
        started = time.perf_counter()
        if model is als and warm_from and plan.warm_refit_iterations:
            earlier_ids, earlier = warm_from
            start = (
                carried_rows(earlier_ids.user_ids, earlier.user_factors, ids.user_ids, als_params.seed),
                carried_rows(earlier_ids.item_ids, earlier.item_factors, ids.item_ids, als_params.seed),
            )
            als.fit(x_fit, start=start, iterations=plan.warm_refit_iterations)
        else:
            model.fit(x_fit)
        elapsed = time.perf_counter() - started
        fit_seconds = elapsed if model is als else fit_seconds
        info(f"fitted {model.name} on {x_fit.shape[0]:,} users x {x_fit.shape[1]:,} items in {elapsed:.1f}s")

    # Evaluate the item-item kinds in the sparse form a bundle serves; EASE's dense matrix is
    # evaluated beside it ("ease_full") so the table shows what pruning costs.
    served_forms: dict[str, sp.csr_matrix] = {"item_knn": knn.similarity}
    evaluated: list[Recommender] = [als, models[1], SparseItemItem("item_knn", knn.similarity, False)]
    if "ease" not in skipped:
        served_forms["ease"] = ease.pruned(plan.ease_neighbours)
        ease.name = "ease_full"
        evaluated += [SparseItemItem("ease", served_forms["ease"], True), ease]
    evaluation = evaluate(evaluated, x_fit, x_test, n_boot=plan.bootstrap_samples, max_users=plan.test_users)
    evaluation.skipped = skipped

    kind, why = _choose(plan, validation_scores, skipped)
    info(f"serving {kind}: {why}")
    kind_params = {
        "als": als_params.flat(),
        "ease": {"l2": ease_l2, "neighbours": plan.ease_neighbours},
        "item_knn": {"neighbours": knn_neighbours},
    }[kind]
    return TrainedModel(
        ids=ids,
        kind=kind,
        user_factors=als.user_factors,
        item_factors=als.item_factors,
        params=als_params,
        length_norm=als.length_norm,
        evaluation=evaluation,
        dataset_fingerprint=fingerprint(fit_frame.select("user_id", "movie_id", "weight", "timestamp")),
        split_stats=split_stats,
        fit_seconds=fit_seconds,
        item_similarity=served_forms.get(kind),
        binary_input=kind == "ease",
        kind_params=kind_params,
        selection={
            "kind": kind,
            "reason": why,
            "validation": validation_scores,
            "test_check": confirm_on_test(evaluation, kind, plan.primary_metric),
        },
        search=result,
    )


def carried_rows(old_ids: np.ndarray, old: np.ndarray, new_ids: np.ndarray, seed: int) -> np.ndarray:
    """Factor rows for ``new_ids`` (sorted): the earlier fit's row where the id had one, else
    implicit's own random start (uniform * 0.01)."""
    rows = np.random.default_rng(seed).random((len(new_ids), old.shape[1]), dtype=np.float32) * 0.01
    position = np.minimum(np.searchsorted(old_ids, new_ids), len(old_ids) - 1)
    known = old_ids[position] == new_ids
    rows[known] = old[position[known]]
    return rows


def _halves(users: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    shuffled = np.random.default_rng(seed).permutation(users)
    half = len(shuffled) // 2
    return np.sort(shuffled[:half]), np.sort(shuffled[half:])


def _models(plan, kinds, als_params, knn_neighbours, ease_l2, n_items) -> list[Recommender]:
    models: list[Recommender] = []
    if "als" in kinds:
        models.append(ALS(als_params))
    if "item_knn" in kinds:
        models.append(ItemKNN(knn_neighbours))
    if "ease" in kinds and not EASE(ease_l2, plan.ease_max_items).too_large(n_items):
        models.append(EASE(ease_l2, plan.ease_max_items))
    return models


def _als_params(base: ALSParams, flat: dict) -> ALSParams:
    weighting = {k.removeprefix("weighting_"): v for k, v in flat.items() if k.startswith("weighting_")}
    plain = {k: v for k, v in flat.items() if not k.startswith("weighting_")}
    return replace(base, **plain, weighting=Weighting(**weighting))


def _choose(plan: TrainingPlan, validation_scores: dict[str, float], skipped: dict) -> tuple[str, str]:
    if plan.model_kind != "auto":
        return plan.model_kind, f"model_kind is set to {plan.model_kind}"
    available = {k: v for k, v in validation_scores.items() if k in SERVABLE and k not in skipped}
    if not available:
        return "als", "no validation split to choose on: ALS by default"
    kind = max(available, key=lambda k: (available[k], k == "als"))
    ranked = ", ".join(f"{k} {v:.4f}" for k, v in sorted(available.items(), key=lambda kv: -kv[1]))
    return kind, f"best validation {plan.primary_metric} ({ranked})"


def confirm_on_test(evaluation: Evaluation, kind: str, metric: str) -> dict:
    """Does the test split confirm the choice? The served kind should not fall below any other
    method's lower 95% bound (without intervals, below its value)."""
    served = evaluation.get(kind).metrics[metric]
    rivals = [r for r in evaluation.results if r.method != kind]
    best = max(rivals, key=lambda r: r.metrics[metric])
    bound = best.intervals.get(metric, (best.metrics[metric], None))[0]
    return {
        "served": served,
        "best_other": best.method,
        "best_other_value": best.metrics[metric],
        "best_other_lower_bound": bound,
        "confirmed": bool(served >= bound),
    }


def _split_stats(test: pl.DataFrame, fitted: pl.DataFrame, ids: IdMap) -> dict:
    known_users = test["user_id"].is_in(ids.user_ids.tolist())
    known_items = test["movie_id"].is_in(ids.item_ids.tolist())
    stats: dict[str, float] = {
        "test_users": test["user_id"].n_unique(),
        "cold_test_users": test.filter(~known_users)["user_id"].n_unique(),
        "test_interactions_unknown_items": int((~known_items).sum()),
        "fit_interactions": len(fitted),
    }
    stats["cold_user_share"] = stats["cold_test_users"] / max(stats["test_users"], 1)
    return stats
