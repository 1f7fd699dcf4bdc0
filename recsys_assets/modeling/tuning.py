"""Hyperparameter search for ALS on the validation split."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from .evaluation import evaluate
from .recommenders import ALS, ALSParams


@dataclass(frozen=True)
class SearchSpace:
    factors: tuple[int, ...] = (32, 64, 128)
    regularization: tuple[float, ...] = (0.01, 0.1, 1.0)
    iterations: tuple[int, ...] = (15,)
    weighting: tuple[str, ...] = ("bm25", "log", "linear")
    alpha: tuple[float, ...] = (1.0, 4.0, 16.0)
    n_trials: int = 12
    seed: int = 0


def sample_trials(space: SearchSpace, base: ALSParams) -> list[ALSParams]:
    """The whole grid when it is small enough, else ``n_trials`` distinct points drawn at random."""
    grid = list(
        itertools.product(space.factors, space.regularization, space.iterations, space.weighting, space.alpha)
    )
    if len(grid) > space.n_trials:
        rng = np.random.default_rng(space.seed)
        grid = [grid[i] for i in sorted(rng.choice(len(grid), space.n_trials, replace=False))]
    return [
        replace(
            base,
            factors=factors,
            regularization=reg,
            iterations=iterations,
            weighting=replace(base.weighting, scheme=scheme, alpha=alpha),
        )
        for factors, reg, iterations, scheme, alpha in grid
    ]


@dataclass(frozen=True)
class Trial:
    params: ALSParams
    score: float
    metrics: dict[str, float]
    seconds: float


def search(
    train: sp.csr_matrix,
    validation: sp.csr_matrix,
    trials: list[ALSParams],
    metric: str = "ndcg@10",
    on_trial: Callable[[int, Trial], None] | None = None,
) -> list[Trial]:
    """Fit each candidate on train, score it on validation; returns trials best first."""
    results = []
    for number, params in enumerate(trials):
        started = time.perf_counter()
        model = ALS(params)
        model.fit(train)
        metrics = evaluate([model], train, validation, n_boot=0).results[0].metrics
        trial = Trial(params, metrics[metric], metrics, time.perf_counter() - started)
        results.append(trial)
        if on_trial:
            on_trial(number, trial)
    return sorted(results, key=lambda t: -t.score)
