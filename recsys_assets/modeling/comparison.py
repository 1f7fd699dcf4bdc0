"""Champion against challenger on the same held-out window, each scored the way it would serve.

The window is the challenger's test split (each user's most recent interactions) minus every
(user, movie) pair either bundle trained on, so neither model has seen it. Both rank their own
catalogue for the same users with the same history excluded: known users by ALS scores, users a
bundle does not know by its popularity ranking (the service's fallback). The same bootstrap
resamples of users give paired 95% intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_serving.bundle import Bundle

from .evaluation import KS, Evaluation, MethodResult, bootstrap_ci, hit_matrix, per_user_metrics, top_k
from .matrices import IdMap, to_csr


@dataclass
class BundleScorer:
    """A bundle as a :class:`~.recommenders.Recommender` over a fixed list of users."""

    name: str
    bundle: Bundle
    user_rows: np.ndarray  # per evaluation user: row in the bundle's user factors, -1 if unknown

    def __post_init__(self) -> None:
        counts = self.bundle.seen.getnnz(axis=0).astype(np.float32)
        self.popularity = counts / max(float(counts.max(initial=0.0)), 1.0)

    def scores(self, users: np.ndarray, user_items) -> np.ndarray:
        rows = self.user_rows[users]
        known = rows >= 0
        out = np.empty((len(users), len(self.bundle.item_ids)), dtype=np.float32)
        out[known] = self.bundle.user_factors[rows[known]] @ self.bundle.item_factors.T
        out[~known] = self.popularity
        return out


def trained_pairs(bundle: Bundle) -> pl.DataFrame:
    """The (user, movie) pairs a bundle's model was fitted on."""
    rows, cols = bundle.liked.nonzero()
    return pl.DataFrame(
        {"user_id": bundle.user_ids[rows], "movie_id": bundle.item_ids[cols]},
        schema={"user_id": pl.Int64, "movie_id": pl.Int64},
    )


def held_out_window(test: pl.DataFrame, bundles: list[Bundle]) -> pl.DataFrame:
    pairs = test.select(pl.col("user_id").cast(pl.Int64), pl.col("movie_id").cast(pl.Int64), "timestamp")
    for bundle in bundles:
        pairs = pairs.join(trained_pairs(bundle), on=["user_id", "movie_id"], how="anti")
    return pairs


@dataclass
class Comparison:
    window_interactions: int
    window_first: int | None
    window_last: int | None
    evaluation: Evaluation

    def metrics(self, name: str) -> dict[str, float]:
        return self.evaluation.get(name).metrics


def compare_bundles(
    champion: Bundle,
    challenger: Bundle,
    history: pl.DataFrame,
    test: pl.DataFrame,
    ks: tuple[int, ...] = KS,
    n_boot: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Metrics of ``champion`` and ``challenger`` on the window; ``history`` is every interaction
    outside the test split (excluded from both rankings, and the users must have some)."""
    window = held_out_window(test, [champion, challenger])
    users = np.intersect1d(
        window["user_id"].unique().to_numpy(), history["user_id"].unique().to_numpy().astype(np.int64)
    )
    catalogue = np.union1d(np.union1d(champion.item_ids, challenger.item_ids), window["movie_id"].to_numpy())
    relevant = to_csr(window, IdMap(users, catalogue), value=None)
    n_relevant = relevant.getnnz(axis=1)
    results = []
    for name, bundle in (("champion", champion), ("challenger", challenger)):
        bundle_ids = IdMap(bundle.user_ids, bundle.item_ids)
        scorer = BundleScorer(name, bundle, bundle_ids.user_index(users))
        seen = to_csr(history, IdMap(users, bundle.item_ids), value=None)
        top = top_k(scorer, np.arange(len(users)), seen, max(ks))
        as_catalogue = np.where(top >= 0, np.searchsorted(catalogue, bundle.item_ids[np.maximum(top, 0)]), -1)
        values = per_user_metrics(hit_matrix(as_catalogue, relevant), n_relevant, ks)
        metrics = {metric: float(array.mean()) for metric, array in values.items()}
        metrics["known_user_share"] = float((scorer.user_rows >= 0).mean()) if len(users) else 0.0
        results.append(MethodResult(name, metrics, bootstrap_ci(values, n_boot, seed)))
    timestamps = window.filter(pl.col("user_id").is_in(users.tolist()))["timestamp"]
    return Comparison(
        window_interactions=int(n_relevant.sum()),
        window_first=int(timestamps.min()) if len(timestamps) else None,
        window_last=int(timestamps.max()) if len(timestamps) else None,
        evaluation=Evaluation(users=len(users), results=results),
    )


@dataclass(frozen=True)
class PromotionRule:
    metric: str = "ndcg@10"
    tolerance: float = 0.02  # the challenger may trail the champion by this share of its value
    min_users: int = 20

    def describe(self) -> str:
        return (
            f"promote when challenger {self.metric} >= champion {self.metric} x (1 - {self.tolerance}) "
            f"on at least {self.min_users} window users, and every blocking check passed"
        )

    def decide(self, comparison: Comparison) -> tuple[bool, str]:
        if comparison.evaluation.users < self.min_users:
            return False, (
                f"only {comparison.evaluation.users} users in the held-out window "
                f"(need {self.min_users}): not enough evidence to replace the champion"
            )
        champion = comparison.metrics("champion")[self.metric]
        challenger = comparison.metrics("challenger")[self.metric]
        bar = champion * (1 - self.tolerance)
        if challenger >= bar:
            return True, f"challenger {self.metric} {challenger:.4f} >= {bar:.4f} (champion {champion:.4f})"
        return False, f"challenger {self.metric} {challenger:.4f} < {bar:.4f} (champion {champion:.4f})"
