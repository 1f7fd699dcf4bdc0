"""Ranking metrics against hand-computed values, top-k exclusion, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.modeling.evaluation import (
    bootstrap_ci,
    evaluate,
    hit_matrix,
    per_user_metrics,
    top_k,
)
from recsys_assets.modeling.recommenders import MostPopular


def test_metrics_by_hand() -> None:
    # User 0: relevant {1, 3}; ranking [1, 2, 3] -> hits at ranks 1 and 3.
    # User 1: relevant {4}; ranking [0, 4, 2] -> hit at rank 2.
    hits = np.array([[True, False, True], [False, True, False]])
    values = per_user_metrics(hits, np.array([2, 1]), ks=(3,))
    assert values["recall@3"] == pytest.approx([1.0, 1.0])
    assert values["precision@3"] == pytest.approx([2 / 3, 1 / 3])
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3)
    assert values["ndcg@3"] == pytest.approx([dcg0 / idcg0, (1 / math.log2(3)) / 1.0])
    assert values["map@3"] == pytest.approx([(1 + 2 / 3) / 2, 0.5])
    assert values["mrr@3"] == pytest.approx([1.0, 0.5])
    assert values["hit_rate@3"] == pytest.approx([1.0, 1.0])


def test_cut_off_and_misses() -> None:
    hits = np.array([[False, False, True], [False, False, False]])
    values = per_user_metrics(hits, np.array([3, 2]), ks=(2, 3))
    assert values["recall@2"] == pytest.approx([0.0, 0.0])
    assert values["recall@3"] == pytest.approx([1 / 3, 0.0])
    assert values["map@3"] == pytest.approx([(1 / 3) / 3, 0.0])  # divided by min(3 relevant, k=3)
    assert values["mrr@3"] == pytest.approx([1 / 3, 0.0])


def test_top_k_excludes_seen_and_pads_short_lists() -> None:
    train = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=np.float32))
    model = MostPopular()
    model.fit(train)  # popularity: item 0:2, 1:2, 2:2, 3:0
    top = top_k(model, np.arange(3), train, k=3)
    for user in range(3):
        chosen = top[user][top[user] >= 0]
        assert not set(chosen) & set(train[user].indices)
    assert top[2].tolist() == [3, -1, -1]  # only item 3 is unseen
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=np.float32))
    hits = hit_matrix(top, relevant)
    assert hits[2].tolist() == [True, False, False]  # -1 padding never counts


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_users() -> None:
    rng = np.random.default_rng(1)
    small = {"m": rng.random(50)}
    large = {"m": rng.random(5000)}
    low, high = bootstrap_ci(small, n_boot=500)["m"]
    assert low < small["m"].mean() < high
    low2, high2 = bootstrap_ci(large, n_boot=500)["m"]
    assert (high2 - low2) < (high - low) / 4


def test_evaluate_scores_every_method_on_the_same_users() -> None:
    rng = np.random.default_rng(0)
    train = sp.random(200, 50, density=0.1, format="csr", random_state=1, dtype=np.float32)
    test = sp.random(200, 50, density=0.02, format="csr", random_state=2, dtype=np.float32)
    test = test - test.multiply(train > 0)  # held-out items are unseen in train
    test.eliminate_zeros()
    model = MostPopular()
    model.fit(train)
    result = evaluate([model], train, test, n_boot=100, seed=int(rng.integers(10)))
    expected_users = int(((train.getnnz(axis=1) > 0) & (test.getnnz(axis=1) > 0)).sum())
    assert result.users == expected_users
    metrics = result.get("most_popular").metrics
    assert 0 <= metrics["ndcg@10"] <= 1 and 0 < metrics["coverage@10"] <= 1
    assert "ndcg@10" in result.markdown()


def test_batched_top_k_equals_the_single_row_exact_ranking() -> None:
    """best_rows_each (evaluation, precomputed serving lists) against best_rows (what a request
    computes), on blocks full of ties and excluded items: the same rows in the same order."""
    from recsys_serving.models import best_rows, best_rows_each

    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, width = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        scores = rng.integers(0, 5, size=(n, width)).astype(np.float32)  # few values: many ties
        scores[rng.random((n, width)) < 0.3] = -np.inf
        k = int(rng.integers(1, width + 2))
        got = best_rows_each(scores, k)
        for row in range(n):
            assert got[row][got[row] >= 0].tolist() == best_rows(scores[row], k).tolist()
