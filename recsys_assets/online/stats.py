"""The statistics of an A/B test on per-user metrics: sample-ratio mismatch, Welch's t-test with
its interval, the sample size a minimum effect needs, a plain-language verdict, and off-policy
estimates (IPS, self-normalised IPS) from logged propensities. Plain numpy/scipy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

SRM_ALPHA = 0.001  # a sample-ratio mismatch is flagged below this p-value


@dataclass(frozen=True)
class SampleRatio:
    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def sample_ratio(counts: dict[str, int], weights: dict[str, float]) -> SampleRatio:
    """Chi-square goodness of fit of the units per arm against the configured weights."""
    arms = list(weights)
    observed = np.array([counts.get(arm, 0) for arm in arms], dtype=np.float64)
    shares = np.array([weights[arm] for arm in arms], dtype=np.float64)
    expected = observed.sum() * shares / shares.sum()
    if observed.sum() == 0:
        return SampleRatio(dict(counts), dict(zip(arms, expected.tolist(), strict=True)), 0.0, 1.0)
    chi2, p_value = stats.chisquare(observed, expected)
    return SampleRatio(
        {arm: int(c) for arm, c in zip(arms, observed, strict=True)},
        dict(zip(arms, expected.tolist(), strict=True)),
        float(chi2),
        float(p_value),
    )


@dataclass(frozen=True)
class Difference:
    """treatment - control of a per-user metric."""

    control_mean: float
    treatment_mean: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    degrees_of_freedom: float
    n_control: int
    n_treatment: int

    @property
    def relative(self) -> float:
        return self.difference / self.control_mean if self.control_mean else float("nan")


def welch(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> Difference:
    """Welch's t-test (unequal variances) on per-user values, with the (1 - alpha) interval of
    the difference of means from the Welch–Satterthwaite degrees of freedom."""
    a, b = np.asarray(control, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's test needs at least 2 users per arm, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    difference = float(b.mean() - a.mean())
    se = float(np.sqrt(va + vb))
    if se == 0:
        p_value = 1.0 if difference == 0 else 0.0
        return Difference(
            float(a.mean()),
            float(b.mean()),
            difference,
            difference,
            difference,
            p_value,
            float("inf"),
            a.size,
            b.size,
        )
    df = float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)))
    t = difference / se
    p_value = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df) * se)
    return Difference(
        float(a.mean()),
        float(b.mean()),
        difference,
        difference - half,
        difference + half,
        p_value,
        df,
        a.size,
        b.size,
    )


def required_users(
    sd_control: float,
    sd_treatment: float,
    min_effect: float,
    share_treatment: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Users in total for a two-sided test at ``alpha`` to detect an absolute difference of
    ``min_effect`` with ``power``, when a share ``share_treatment`` of users is in treatment
    (normal approximation: n = (z_a + z_b)^2 (sd_c^2 / p_c + sd_t^2 / p_t) / effect^2)."""
    if min_effect <= 0 or not 0 < share_treatment < 1:
        raise ValueError("min_effect must be > 0 and share_treatment in (0, 1)")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    variance = sd_control**2 / (1 - share_treatment) + sd_treatment**2 / share_treatment
    return int(np.ceil(z**2 * variance / min_effect**2))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "invalid", "treatment wins", "control wins", "not worse", "no difference yet"
    explanation: str


def decide(
    ratio: SampleRatio, difference: Difference, needed: int, alpha: float = 0.05, margin: float = 0.0
) -> Verdict:
    """The experiment's verdict: invalid under a sample-ratio mismatch; otherwise a winner when
    the interval excludes zero; "not worse" when it stays above ``-margin``; else no difference yet."""
    if ratio.mismatch:
        return Verdict(
            "invalid",
            f"sample-ratio mismatch (chi-square p = {ratio.p_value:.2g} < {SRM_ALPHA}): users per arm "
            f"{ratio.counts} against expected { ({k: round(v) for k, v in ratio.expected.items()}) }; "
            "the split is broken, so no comparison is trusted",
        )
    n = difference.n_control + difference.n_treatment
    interval = f"difference {difference.difference:+.4f} (95% CI {difference.ci_low:+.4f} to {difference.ci_high:+.4f}, p = {difference.p_value:.3g})"
    if difference.p_value < alpha and difference.difference > 0:
        return Verdict("treatment wins", f"the treatment is better: {interval}")
    if difference.p_value < alpha and difference.difference < 0:
        return Verdict("control wins", f"the control is better: {interval}")
    if margin > 0 and difference.ci_low > -margin:
        return Verdict(
            "not worse", f"the treatment is not worse than the control by more than {margin}: {interval}"
        )
    return Verdict(
        "no difference yet",
        f"no significant difference: {interval}; {n:,} of the {needed:,} users the minimum effect needs",
    )


def ips(rewards: np.ndarray, target: np.ndarray, logging: np.ndarray) -> tuple[float, float]:
    """Inverse propensity scoring of a target policy on logged data: (IPS, self-normalised IPS).

    ``target`` and ``logging`` are the probabilities the target and the logging policy give the
    logged action; a zero logging probability is refused (nothing can be said of that action)."""
    rewards, target, logging = (np.asarray(x, dtype=np.float64) for x in (rewards, target, logging))
    if (logging <= 0).any():
        raise ValueError("logged propensities must be > 0")
    weights = target / logging
    estimate = float((weights * rewards).mean()) if rewards.size else float("nan")
    normalised = float((weights * rewards).sum() / weights.sum()) if weights.sum() > 0 else float("nan")
    return estimate, normalised
