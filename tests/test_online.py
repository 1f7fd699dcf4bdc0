"""Online evaluation: A/B statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
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
