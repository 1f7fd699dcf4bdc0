"""Online evaluation: A/B statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from recsys_assets.online.stats import decide, ips, required_users, sample_ratio, welch


def test_sample_ratio_chi_square_by_hand() -> None:
    # 510 / 490 against 50/50: chi2 = 2 * 10^2 / 500 = 0.4; with 1 degree of freedom
    # p = erfc(sqrt(0.4 / 2)).
    fair = sample_ratio({"control": 510, "treatment": 490}, {"control": 0.5, "treatment": 0.5})
    assert fair.chi2 == pytest.approx(0.4)
    assert fair.p_value == pytest.approx(math.erfc(math.sqrt(0.2)))
    assert not fair.mismatch
    # 90/10 configured, 850 / 150 observed: chi2 = 50^2/900 + 50^2/100 = 27.78, p ~ 1.4e-7.
    broken = sample_ratio({"control": 850, "treatment": 150}, {"control": 0.9, "treatment": 0.1})
    assert broken.chi2 == pytest.approx(2500 / 900 + 2500 / 100)
    assert broken.p_value == pytest.approx(math.erfc(math.sqrt(broken.chi2 / 2)))
    assert broken.mismatch


def test_welch_interval_by_hand() -> None:
    control = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, variance 5/3
    treatment = np.array([2.0, 4.0, 6.0])  # mean 4, variance 4
    got = welch(control, treatment)
    va, vb = (5 / 3) / 4, 4 / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert got.difference == pytest.approx(1.5)
    assert got.degrees_of_freedom == pytest.approx(df)
    from scipy import stats

    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (got.ci_low, got.ci_high) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    assert got.p_value == pytest.approx(2 * stats.t.sf(1.5 / math.sqrt(va + vb), df))
    assert got.p_value == pytest.approx(stats.ttest_ind(treatment, control, equal_var=False).pvalue)
    with pytest.raises(ValueError, match="at least 2 users"):
        welch(np.array([1.0]), treatment)


def test_required_users_by_hand() -> None:
    # sd 0.3 in both arms, 50/50, effect 0.01: (1.95996 + 0.84162)^2 * (0.09/0.5 * 2) / 0.0001.
    z = 1.959963984540054 + 0.8416212335729143
    assert required_users(0.3, 0.3, 0.01, 0.5) == math.ceil(z**2 * 0.36 / 0.0001)
    # A 10% treatment arm needs more users for the same effect.
    assert required_users(0.3, 0.3, 0.01, 0.1) > required_users(0.3, 0.3, 0.01, 0.5)


def test_verdicts() -> None:
    rng = np.random.default_rng(0)
    fair = sample_ratio({"control": 500, "treatment": 500}, {"control": 0.5, "treatment": 0.5})
    better = welch(rng.normal(0.10, 0.05, 500), rng.normal(0.12, 0.05, 500))
    assert decide(fair, better, 100).outcome == "treatment wins"
    same = welch(rng.normal(0.10, 0.05, 500), rng.normal(0.10, 0.05, 500))
    assert decide(fair, same, 5000).outcome == "no difference yet"
    assert decide(fair, same, 5000, margin=0.05).outcome == "not worse"
    skewed = sample_ratio({"control": 600, "treatment": 400}, {"control": 0.5, "treatment": 0.5})
    verdict = decide(skewed, better, 100)
    assert verdict.outcome == "invalid" and "sample-ratio mismatch" in verdict.explanation


def test_ips_by_hand() -> None:
    rewards = np.array([1.0, 0.0, 1.0])
    logging = np.array([0.5, 0.25, 0.1])
    target = np.array([1.0, 0.0, 0.5])
    estimate, normalised = ips(rewards, target, logging)
    weights = np.array([2.0, 0.0, 5.0])
    assert estimate == pytest.approx((2.0 + 5.0) / 3)
    assert normalised == pytest.approx(7.0 / weights.sum())
    with pytest.raises(ValueError):
        ips(rewards, target, np.array([0.5, 0.0, 0.1]))


def _log(rows: list[dict]) -> pl.DataFrame:
    from recsys_assets.online.replay import LOG_COLUMNS

    base = {name: None for name in LOG_COLUMNS} | {
        "route": "/users/{user_id}/recommendations",
        "cold_start": 0,
    }
    return pl.DataFrame([base | row for row in rows], schema=LOG_COLUMNS)


def test_replay_metrics_by_hand() -> None:
    import json

    from recsys_assets.online.replay import per_user, replay_metrics, served_lists, summarise

    log = _log(
        [
            # user 1 at t=1000 is served 10, 20, 30; later rates 20 (5.0) and 40 (4.5) within the
            # horizon, 30 (2.0, not positive), and 10 after the horizon.
            {"request_id": "a", "ts": 5.0, "simulated_ts": 1000.0, "user_id": 1, "k": 3, "status": 200,
             "items": json.dumps([[10, 1, 0.9], [20, 2, 0.8], [30, 3, 0.7]]), "bundle_version": "v1", "arm": "control"},
            # user 2 is served 50, 60; rates nothing later.
            {"request_id": "b", "ts": 1000.0, "user_id": 2, "k": 2, "status": 200,
             "items": json.dumps([[50, 1, 0.5], [60, 2, 0.4]]), "bundle_version": "v2", "arm": "treatment"},
            {"request_id": "c", "ts": 1000.0, "user_id": 3, "k": 2, "status": 503, "items": None},
        ]
    )  # fmt: skip
    ratings = pl.DataFrame(
        {"user_id": [1, 1, 1, 1, 1], "movie_id": [20, 40, 30, 10, 20], "rating": [5.0, 4.5, 2.0, 5.0, 4.0],
         "timestamp": [1500, 2000, 1200, 1000 + 31 * 86_400, 900]}
    )  # fmt: skip
    served = served_lists(log)
    assert served["request_id"].to_list() == ["a", "b"]  # the 503 served nothing
    assert served["at"].to_list() == [1000.0, 1000.0]  # the simulated time wins over arrival
    metrics = replay_metrics(served, ratings, horizon_days=30).sort("request_id")
    a = metrics.row(0, named=True)
    # One hit (20 at rank 2) of 2 later positives (20, 40): DCG = 1/log2(3), ideal = 1 + 1/log2(3).
    assert a["hits"] == 1 and a["later_positives"] == 2
    assert a["precision"] == pytest.approx(1 / 3)
    assert a["ndcg"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert a["rated_something_served"] == 1.0  # 20 and 30 were rated
    b = metrics.row(1, named=True)
    assert (b["hits"], b["ndcg"], b["hit_rate"], b["rated_something_served"]) == (0, 0.0, 0.0, 0.0)
    table = summarise(per_user(metrics), n_boot=0)
    assert table["arm"].to_list() == ["control", "treatment"]
    assert table["precision"].to_list() == pytest.approx([1 / 3, 0.0])


def test_kpis_by_hand() -> None:
    import json

    from recsys_assets.online.replay import gini, kpis_by_group

    assert gini(np.array([1.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert gini(np.array([0.0, 0.0, 3.0])) == pytest.approx(2 / 3)
    movies = pl.DataFrame({"movie_id": [10, 20, 30, 40], "genres": [["A"], ["A", "B"], ["C"], []]})
    ratings = pl.DataFrame({"user_id": [1, 2, 3, 4], "movie_id": [10, 10, 20, 30]})
    log = _log(
        [
            {"request_id": "a", "ts": 1.0, "user_id": 1, "k": 2, "status": 200, "latency_ms": 1.0,
             "strategy": "als", "items": json.dumps([[10, 1, 0.9], [20, 2, 0.8]]), "bundle_version": "v"},
            {"request_id": "b", "ts": 2.0, "user_id": 2, "k": 2, "status": 200, "latency_ms": 3.0,
             "strategy": "popular_fallback", "items": json.dumps([[10, 1, 1.0], [30, 2, 0.5]]), "bundle_version": "v"},
            {"request_id": "c", "ts": 3.0, "user_id": 3, "k": 2, "status": 500, "latency_ms": 5.0, "bundle_version": "v"},
        ]
    )  # fmt: skip
    kpis = kpis_by_group(log, movies, ratings).row(0, named=True)
    assert kpis["requests"] == 3 and kpis["error_rate"] == pytest.approx(1 / 3)
    assert kpis["latency_p50_ms"] == pytest.approx(3.0)
    assert kpis["fallback_share"] == pytest.approx(0.5)
    assert kpis["coverage"] == pytest.approx(3 / 4)  # 10, 20, 30 of four movies
    # Served 10, 20, 10, 30: shares 1/2, 1/4, 1/2, 1/4 -> -log2 = 1, 2, 1, 2.
    assert kpis["novelty"] == pytest.approx(1.5)
    # Jaccard distances: {A} vs {A, B} = 1/2; {A} vs {C} = 1.
    assert kpis["intra_list_diversity"] == pytest.approx(0.75)
    assert kpis["gini"] == pytest.approx(gini(np.array([2.0, 1.0, 1.0])))


def test_promotion_on_online_evidence() -> None:
    from recsys_assets.modeling.promotion import settle_by_experiment

    report = {
        "experiment_id": "e",
        "metric": "ndcg",
        "treatment": "treatment",
        "bundles": {"control": ["old"], "treatment": ["new"]},
        "sample_ratio_mismatch": False,
        "verdict": "treatment wins",
        "explanation": "the treatment is better",
    }
    win = settle_by_experiment(report, "new")
    assert win is not None and win.promote and "online evidence (experiment e" in win.reason
    not_worse = settle_by_experiment({**report, "verdict": "not worse"}, "new")
    assert not_worse is not None and not_worse.promote
    loss = settle_by_experiment({**report, "verdict": "control wins"}, "new")
    assert loss is not None and not loss.promote
    # Evidence about another bundle, an invalid split, or no difference yet decide nothing.
    assert settle_by_experiment(report, "other") is None
    assert settle_by_experiment({**report, "sample_ratio_mismatch": True}, "new") is None
    assert settle_by_experiment({**report, "verdict": "no difference yet"}, "new") is None
    assert settle_by_experiment(None, "new") is None
