"""Ranking metrics, vectorised over users, with bootstrap confidence intervals.

Protocol: every method ranks the full training catalogue for the same warm test users (users with
training history and at least one test item in the catalogue), items the user has already
interacted with in training are excluded, and the same bootstrap resamples of users give the 95%
intervals for every method. Recall is hits / relevant items; NDCG uses binary gains; MAP@K
divides by min(relevant, K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_serving.models import best_rows_each

from .recommenders import Scorer

KS = (10, 20)
METRICS = ("recall", "precision", "ndcg", "map", "hit_rate", "mrr")
SCORE_BUDGET = 1 << 24  # floats per scoring batch (64 MiB)


def top_k(model: Scorer, users: np.ndarray, user_items: sp.csr_matrix, k: int) -> np.ndarray:
    """Each user's top ``k`` item indices, already-seen items excluded; -1 pads short lists."""
    n_items = user_items.shape[1]
    take = min(k, n_items)
    out = np.full((len(users), k), -1, dtype=np.int64)
    batch = max(1, SCORE_BUDGET // max(n_items, 1))
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        scores = np.array(model.scores(chunk, user_items), dtype=np.float32)
        rows, cols = user_items[chunk].nonzero()
        scores[rows, cols] = -np.inf
        out[start : start + len(chunk), :take] = best_rows_each(scores, take)
    return out


def agreement(
    reference: Scorer, other: Scorer, users: np.ndarray, user_items: sp.csr_matrix, k: int = 10
) -> dict[str, float]:
    """How far ``other`` is from ``reference`` on ``users``: the relative (Frobenius) difference
    of their score matrices, and the mean share of each user's top ``k`` (seen items excluded)
    that both rank there. Two fits of one model on different hardware should agree closely."""
    difference = squared = 0.0
    batch = max(1, SCORE_BUDGET // max(user_items.shape[1], 1))
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        mine = np.asarray(reference.scores(chunk, user_items), dtype=np.float64)
        theirs = np.asarray(other.scores(chunk, user_items), dtype=np.float64)
        difference += float(np.square(mine - theirs).sum())
        squared += float(np.square(mine).sum())
    ours, theirs = top_k(reference, users, user_items, k), top_k(other, users, user_items, k)
    shared = [
        len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(int((a >= 0).sum()), 1)
        for a, b in zip(ours, theirs, strict=True)
    ]
    return {
        "relative_score_difference": (difference / squared) ** 0.5 if squared else 0.0,
        f"top_{k}_overlap": float(np.mean(shared)) if shared else 1.0,
    }


def hit_matrix(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """hits[u, r] is True when the item at rank r for user u is relevant (rows aligned with top)."""
    hits = np.zeros(top.shape, dtype=bool)
    batch = max(1, SCORE_BUDGET // max(relevant.shape[1], 1))
    for start in range(0, top.shape[0], batch):
        block = top[start : start + batch]
        dense = relevant[start : start + batch].toarray() > 0
        valid = block >= 0
        picked = np.take_along_axis(dense, np.where(valid, block, 0), axis=1)
        hits[start : start + batch] = picked & valid
    return hits


def per_user_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...] = KS
) -> dict[str, np.ndarray]:
    """Per-user metric values (name@k -> array over users). Users must have n_relevant > 0."""
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal_prefix = np.cumsum(discount)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = hits[:, :k].astype(np.float64)
        n_hits = h.sum(axis=1)
        capped = np.minimum(n_relevant, k)
        out[f"recall@{k}"] = n_hits / n_relevant
        out[f"precision@{k}"] = n_hits / k
        out[f"ndcg@{k}"] = (h * discount[:k]).sum(axis=1) / ideal_prefix[capped.astype(int) - 1]
        precision_at = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        out[f"map@{k}"] = (precision_at * h).sum(axis=1) / capped
        out[f"hit_rate@{k}"] = (n_hits > 0).astype(np.float64)
        first = np.argmax(h > 0, axis=1)
        out[f"mrr@{k}"] = np.where(n_hits > 0, 1.0 / (first + 1), 0.0)
    return out


def bootstrap_ci(
    values: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the mean over users; the same resamples for every metric."""
    if n_boot <= 0 or not values:
        return {}
    n = len(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    means = {name: np.empty(n_boot) for name in values}
    chunk = max(1, (1 << 23) // max(n, 1))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        sample = rng.integers(0, n, size=(size, n))
        for name, array in values.items():
            means[name][start : start + size] = array[sample].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return {
        name: (float(np.percentile(m, tail)), float(np.percentile(m, 100 - tail)))
        for name, m in means.items()
    }


@dataclass
class MethodResult:
    method: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Evaluation:
    users: int
    results: list[MethodResult]
    skipped: dict[str, str] = field(default_factory=dict)

    def get(self, method: str) -> MethodResult:
        return next(r for r in self.results if r.method == method)

    def table(self) -> pl.DataFrame:
        rows = []
        for result in self.results:
            for name, value in result.metrics.items():
                low, high = result.intervals.get(name, (None, None))
                rows.append(
                    {
                        "method": result.method,
                        "metric": name,
                        "value": value,
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
        return pl.DataFrame(rows)

    def markdown(
        self,
        metrics: tuple[str, ...] = (
            "ndcg@10",
            "recall@10",
            "precision@10",
            "map@10",
            "mrr@10",
            "hit_rate@10",
            "ndcg@20",
            "recall@20",
            "coverage@10",
        ),
    ) -> str:
        header = "| method | " + " | ".join(metrics) + " |"
        lines = [header, "|---|" + "---|" * len(metrics)]
        for result in self.results:
            cells = []
            for name in metrics:
                value = result.metrics.get(name)
                low, high = result.intervals.get(name, (None, None))
                if value is None:
                    cells.append("")
                elif low is None:
                    cells.append(f"{value:.4f}")
                else:
                    cells.append(f"{value:.4f} [{low:.4f}, {high:.4f}]")
            lines.append(f"| {result.method} | " + " | ".join(cells) + " |")
        notes = [f"\n{self.users:,} test users; 95% bootstrap intervals over users in brackets."]
        notes += [f"- {method}: {reason}" for method, reason in self.skipped.items()]
        return "\n".join(lines + notes)


def evaluation_users(train: sp.csr_matrix, test: sp.csr_matrix) -> np.ndarray:
    """Warm users: training history and at least one relevant test item in the catalogue."""
    return np.flatnonzero((train.getnnz(axis=1) > 0) & (test.getnnz(axis=1) > 0))


def sample_users(users: np.ndarray, max_users: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_users`` of ``users``, a fixed seeded sample (sorted), or all of them."""
    if max_users is None or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def evaluate(
    models: Sequence[Scorer],
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    ks: tuple[int, ...] = KS,
    n_boot: int = 1000,
    seed: int = 0,
    max_users: int | None = None,
    users: np.ndarray | None = None,
) -> Evaluation:
    """Every model on the same warm users (only ``users`` among them when given; a seeded sample
    of ``max_users`` when given)."""
    warm = evaluation_users(train, test)
    if users is not None:
        warm = np.intersect1d(warm, users)
    users = sample_users(warm, max_users, seed)
    relevant = test[users]
    n_relevant = relevant.getnnz(axis=1)
    results = []
    for model in models:
        top = top_k(model, users, train, max(ks))
        values = per_user_metrics(hit_matrix(top, relevant), n_relevant, ks)
        metrics = {name: float(array.mean()) for name, array in values.items()}
        for k in ks:
            shown = top[:, :k]
            metrics[f"coverage@{k}"] = float(np.unique(shown[shown >= 0]).size / train.shape[1])
        results.append(MethodResult(model.name, metrics, bootstrap_ci(values, n_boot, seed)))
    return Evaluation(users=len(users), results=results)
