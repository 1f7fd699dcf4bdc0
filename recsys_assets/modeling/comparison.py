"""Champion against challenger on the same held-out window, each scored the way it would serve.

The window is the challenger's test split (each user's most recent interactions, which its model
was not fitted on) minus every (user, movie) pair the champion was fitted on, so neither model has
seen it. Both models get the same input for each window user, their history outside the test split,
and rank their own catalogue with that history excluded: ALS solves the user's factors from it
(the fold-in a server does), an item-item model multiplies it by its matrix, and a user with no
history in a bundle's catalogue gets its popularity ranking (the service's fallback). The same
bootstrap resamples of users give paired 95% intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_serving.bundle import Bundle
from recsys_serving.confidence import confidence_matrix
from recsys_serving.models import ItemItemModel

from ..processing.frames import time_range
from .evaluation import KS, Evaluation, MethodResult, bootstrap_ci, hit_matrix, per_user_metrics, top_k
from .matrices import IdMap, to_csr
from .recommenders import solve_users


@dataclass
class BundleScorer:
    """A bundle as a :class:`~.recommenders.Recommender`: scores from each user's input row."""

    name: str
    bundle: Bundle

    def __post_init__(self) -> None:
        counts = self.bundle.seen.getnnz(axis=0).astype(np.float32)
        self.popularity = counts / max(float(counts.max(initial=0.0)), 1.0)

    def scores(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        bundle = self.bundle
        inputs = user_items[users].tocsr()
        if (item_factors := bundle.item_factors) is not None:  # ALS bundles, and only they, carry factors
            confidence = confidence_matrix(inputs, bundle.weighting, bundle.length_norm)
            factors = solve_users(item_factors, confidence, bundle.regularization)
            out = factors @ item_factors.T
        else:
            model = ItemItemModel(bundle.kind, bundle.item_similarity, inputs, bundle.binary_input)
            out = model.scores_of(inputs)
        out[inputs.getnnz(axis=1) == 0] = self.popularity
        return out


def fitted_pairs(bundle: Bundle) -> pl.DataFrame:
    """The (user, movie) pairs a bundle's model was fitted on."""
    rows, cols = bundle.fitted_pairs().nonzero()
    return pl.DataFrame(
        {"user_id": bundle.user_ids[rows], "movie_id": bundle.item_ids[cols]},
        schema={"user_id": pl.Int64, "movie_id": pl.Int64},
    )


def held_out_window(test: pl.DataFrame, champion: Bundle) -> pl.DataFrame:
    pairs = test.select(pl.col("user_id").cast(pl.Int64), pl.col("movie_id").cast(pl.Int64), "timestamp")
    return pairs.join(fitted_pairs(champion), on=["user_id", "movie_id"], how="anti")


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
    window = held_out_window(test, champion)
    users = np.intersect1d(
        window["user_id"].unique().to_numpy(), history["user_id"].unique().to_numpy().astype(np.int64)
    )
    catalogue = np.union1d(np.union1d(champion.item_ids, challenger.item_ids), window["movie_id"].to_numpy())
    relevant = to_csr(window, IdMap(users, catalogue), value=None)
    n_relevant = relevant.getnnz(axis=1)
    results = []
    for name, bundle in (("champion", champion), ("challenger", challenger)):
        scorer = BundleScorer(name, bundle)
        inputs = to_csr(history, IdMap(users, bundle.item_ids))
        top = top_k(scorer, np.arange(len(users)), inputs, max(ks))
        as_catalogue = np.where(top >= 0, np.searchsorted(catalogue, bundle.item_ids[np.maximum(top, 0)]), -1)
        values = per_user_metrics(hit_matrix(as_catalogue, relevant), n_relevant, ks)
        metrics = {metric: float(array.mean()) for metric, array in values.items()}
        metrics["known_user_share"] = float((inputs.getnnz(axis=1) > 0).mean()) if len(users) else 0.0
        results.append(MethodResult(name, metrics, bootstrap_ci(values, n_boot, seed)))
    first, last = time_range(window.filter(pl.col("user_id").is_in(users.tolist()))) or (None, None)
    return Comparison(
        window_interactions=int(n_relevant.sum()),
        window_first=first,
        window_last=last,
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
