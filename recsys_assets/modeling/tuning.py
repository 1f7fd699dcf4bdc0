"""Hyperparameter search on the validation split, for every model kind that can be served.

Optuna's TPE sampler (seeded) proposes the points; ALS trials are fitted in stages and scored
part-way, so a median pruner stops the hopeless ones early. One time budget bounds the whole
search: item-kNN and EASE (cheap, few parameters) get a share of it first, ALS the rest. A trial is
scored on a fixed, seeded sample of validation users, so its cost does not grow with the users.

The search space follows Rendle et al. 2022 ("Revisiting the Performance of iALS on Item
Recommendation Benchmarks"): iALS matches EASE on MovieLens only with large embeddings and far
stronger regularisation than common defaults, so factors reach 256 and the regularisation spans
four orders of magnitude on a log scale.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import scipy.sparse as sp

from .evaluation import evaluate
from .recommenders import ALS, EASE, ALSParams, ItemKNN, Recommender

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class SearchSpace:
    factors: tuple[int, ...] = (32, 64, 128, 256)
    regularization: tuple[float, float] = (0.01, 100.0)  # log scale
    alpha: tuple[float, float] = (0.1, 30.0)  # log scale
    weighting: tuple[str, ...] = ("linear", "log", "bm25")
    iterations: int = 15
    stages: int = 3  # ALS is scored after every iterations/stages iterations (pruning points)
    ease_l2: tuple[float, float] = (1.0, 20_000.0)  # log scale
    knn_neighbours: tuple[int, int] = (10, 500)  # log scale
    budget_seconds: float = 120.0
    max_trials: int = 40  # ALS trials; the budget usually ends the search first
    baseline_trials: int = 8  # per item-item kind
    baseline_share: float = 0.25  # of the budget, split between item-kNN and EASE
    max_users: int = 10_000  # validation users scored per trial (a seeded sample)
    seed: int = 42

    def __post_init__(self) -> None:
        if self.budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be positive, got {self.budget_seconds}")
        if not 0 <= self.baseline_share < 1:
            raise ValueError(f"baseline_share must be within [0, 1), got {self.baseline_share}")
        if min(self.regularization) <= 0 or min(self.alpha) <= 0 or min(self.ease_l2) <= 0:
            raise ValueError("regularization, alpha and ease_l2 ranges must be positive (log scale)")
        if self.stages < 1 or self.iterations < 1:
            raise ValueError("stages and iterations must be at least 1")

    def checkpoints(self) -> list[int]:
        stages = min(self.stages, self.iterations)
        step = self.iterations / stages
        return sorted({max(1, round(step * s)) for s in range(1, stages + 1)})


@dataclass(frozen=True)
class Trial:
    kind: str
    params: dict
    score: float
    metrics: dict[str, float]
    seconds: float
    state: str = "complete"  # or "pruned": stopped early, score is the last checkpoint's
    iterations: int | None = None


@dataclass
class SearchResult:
    trials: list[Trial]
    seconds: float
    budget_seconds: float
    users: int = 0
    best: dict[str, Trial] = field(default_factory=dict)  # per kind, by validation score
    # The best trial's fitted model per kind, so the kinds are compared without fitting them again;
    # the caller takes them (take_fitted), so a pickled result does not carry them.
    fitted: dict[str, Recommender] = field(default_factory=dict, repr=False)

    def take_fitted(self) -> dict[str, Recommender]:
        fitted, self.fitted = self.fitted, {}
        return fitted


TrialCallback = Callable[[int, Trial], None]


class _Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def search(
    train: sp.csr_matrix,
    validation: sp.csr_matrix,
    space: SearchSpace,
    base: ALSParams,
    metric: str = "ndcg@10",
    kinds: tuple[str, ...] = ("item_knn", "ease", "als"),
    ease_max_items: int = 15_000,
    on_trial: TrialCallback | None = None,
    users: np.ndarray | None = None,
) -> SearchResult:
    """Tune each of ``kinds`` on validation (only ``users``, when given) within
    ``space.budget_seconds`` in all."""
    started = time.perf_counter()
    total = _Deadline(space.budget_seconds)
    trials: list[Trial] = []
    best: dict[str, Trial] = {}
    fitted: dict[str, Recommender] = {}
    users_scored = 0

    def score(model: Recommender) -> dict[str, float]:
        nonlocal users_scored
        evaluation = evaluate(
            [model], train, validation, n_boot=0, max_users=space.max_users, seed=space.seed, users=users
        )
        users_scored = evaluation.users
        return evaluation.results[0].metrics

    def record(trial: Trial, model: Recommender) -> None:
        trials.append(trial)
        if math.isfinite(trial.score) and (trial.kind not in best or trial.score > best[trial.kind].score):
            best[trial.kind], fitted[trial.kind] = trial, model
        if on_trial:
            on_trial(len(trials) - 1, trial)

    baselines = [k for k in kinds if k != "als"]
    if "ease" in baselines and EASE(max_items=ease_max_items).too_large(train.shape[1]):
        baselines.remove("ease")
    for number, kind in enumerate(baselines):
        # Each baseline may use its share of what is left, so time one does not use passes on.
        share = space.baseline_share * space.budget_seconds / len(baselines)
        deadline = _Deadline(min(share * (number + 1) - (time.perf_counter() - started), total.left()))
        _tune_item_item(kind, space, train, score, record, deadline, metric, ease_max_items)
    if "als" in kinds:
        _tune_als(space, base, train, score, record, total, metric)

    return SearchResult(
        trials, time.perf_counter() - started, space.budget_seconds, users_scored, best, fitted
    )


def _study(
    space: SearchSpace, pruner: optuna.pruners.BasePruner | None = None, given: int = 0
) -> optuna.Study:
    """``given``: trials enqueued before the sampler's own, which leave its four random
    start points to it (TPE models the space from those)."""
    sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=4 + given, multivariate=True)
    return optuna.create_study(
        direction="maximize", sampler=sampler, pruner=pruner or optuna.pruners.NopPruner()
    )


def _tune_item_item(kind, space, train, score, record, deadline, metric, ease_max_items) -> None:
    study = _study(space)
    for _ in range(space.baseline_trials):
        if deadline.left() <= 0:
            break
        trial = study.ask()
        began = time.perf_counter()
        params: dict[str, float]
        model: Recommender
        if kind == "ease":
            l2 = trial.suggest_float("l2", *space.ease_l2, log=True)
            params, model = {"l2": l2}, EASE(l2, ease_max_items)
        else:
            neighbours = trial.suggest_int("neighbours", *space.knn_neighbours, log=True)
            params, model = {"neighbours": neighbours}, ItemKNN(neighbours)
        model.fit(train)
        metrics = score(model)
        study.tell(trial, metrics[metric])
        record(Trial(kind, params, metrics[metric], metrics, time.perf_counter() - began), model)


def _tune_als(space, base, train, score, record, deadline, metric) -> None:
    # The configured point goes first, then the same point at the neighbouring factor sizes: on
    # large data the budget allows two or three trials, a random start point could serve a worse
    # model than no search at all, and the embedding size is the parameter whose best value
    # depends most on the data (32 factors beat 64 by a quarter on 25M synthetic ratings, with 16
    # hidden dimensions; real MovieLens wants more).
    inside = (
        space.regularization[0] <= base.regularization <= space.regularization[1]
        and base.weighting.scheme in space.weighting
        and space.alpha[0] <= base.weighting.alpha <= space.alpha[1]
    )
    ladder = _factor_ladder(base.factors, space.factors) if inside else []
    study = _study(space, optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0), len(ladder))
    for factors in ladder:
        study.enqueue_trial(
            {
                "factors": factors,
                "regularization": base.regularization,
                "weighting": base.weighting.scheme,
                "alpha": base.weighting.alpha,
            }
        )
    checkpoints = space.checkpoints()
    for _ in range(space.max_trials):
        if deadline.left() <= 0:
            break
        trial = study.ask()
        params = replace(
            base,
            factors=trial.suggest_categorical("factors", list(space.factors)),
            regularization=trial.suggest_float("regularization", *space.regularization, log=True),
            iterations=checkpoints[-1],
            weighting=replace(
                base.weighting,
                scheme=trial.suggest_categorical("weighting", list(space.weighting)),
                alpha=trial.suggest_float("alpha", *space.alpha, log=True),
            ),
        )
        began = time.perf_counter()
        model = ALS(params)
        metrics: dict[str, float] = {}
        state, done = "complete", 0
        for done in model.fit_in_stages(train, checkpoints):
            metrics = score(model)
            trial.report(metrics[metric], done)
            if done < checkpoints[-1] and (trial.should_prune() or deadline.left() <= 0):
                state = "pruned"
                break
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, metrics[metric])
        record(
            Trial("als", params.flat(), metrics[metric], metrics, time.perf_counter() - began, state, done),
            model,
        )


def _factor_ladder(configured: int, sizes: tuple[int, ...]) -> list[int]:
    """The configured size, then the next smaller and the next larger searched size (the smaller
    first: it is the cheaper fit). Empty when the configured size is not searched."""
    ordered = sorted(set(sizes))
    if configured not in ordered:
        return []
    at = ordered.index(configured)
    smaller = ordered[at - 1 : at] if at else []
    return [configured, *smaller, *ordered[at + 1 : at + 2]]
