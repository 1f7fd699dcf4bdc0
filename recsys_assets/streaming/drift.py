"""Drift between training data and new batches: volume, ratings, item popularity, users, genres.

PSI (population stability index) and KL divergence compare two distributions over the same bins.
Counts get additive (Laplace) smoothing, so a small batch with empty bins is not mistaken for a
large shift (clipping empty bins to an epsilon makes the log ratios explode). Rules of thumb for PSI: < 0.1 stable, 0.1-0.25 moderate,
> 0.25 a shift worth retraining for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from ..processing.frames import number, time_range

SMOOTHING = 0.5  # pseudo-count added to every bin
RATING_BINS = [x / 2 for x in range(1, 11)]


def _normalise(counts: np.ndarray, smoothing: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64) + smoothing
    total = counts.sum()
    return counts / total if total > 0 else np.full(len(counts), 1.0 / max(len(counts), 1))


def psi(expected: np.ndarray, actual: np.ndarray, smoothing: float = SMOOTHING) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts over the same bins)."""
    e, a = _normalise(expected, smoothing), _normalise(actual, smoothing)
    return float(np.sum((a - e) * np.log(a / e)))


def kl_divergence(actual: np.ndarray, expected: np.ndarray, smoothing: float = SMOOTHING) -> float:
    """KL(actual || expected) in nats."""
    a, e = _normalise(actual, smoothing), _normalise(expected, smoothing)
    return float(np.sum(a * np.log(a / e)))


def _aligned_counts(reference: pl.Series, current: pl.Series, bins: list) -> tuple[np.ndarray, np.ndarray]:
    def count(series: pl.Series) -> np.ndarray:
        counted = dict(series.value_counts().iter_rows())
        return np.array([counted.get(b, 0) for b in bins], dtype=np.float64)

    return count(reference), count(current)


def item_bins(reference: pl.DataFrame, top: int = 50) -> list[int]:
    """The reference's most-rated items; everything else shares one "other" bin."""
    ranked = reference.group_by("movie_id").len().sort(["len", "movie_id"], descending=[True, False])
    return ranked["movie_id"].head(top).to_list()


def item_counts(frame: pl.DataFrame, bins: list[int]) -> np.ndarray:
    counted = dict(frame.group_by("movie_id").len().iter_rows())
    head = np.array([counted.get(b, 0) for b in bins], dtype=np.float64)
    return np.append(head, len(frame) - head.sum())


# The numeric measures of a DriftReport, in the order reports show them.
DRIFT_MEASURES = (
    "volume_ratio",
    "rating_psi",
    "rating_kl",
    "item_psi",
    "item_kl",
    "genre_psi",
    "new_user_share",
    "new_item_share",
)


@dataclass(frozen=True)
class DriftThresholds:
    volume_ratio: float = 2.0  # batch volume vs the reference's weekly mean, either direction
    rating_psi: float = 0.2
    item_psi: float = 0.25
    genre_psi: float = 0.2
    new_user_share: float = 0.5
    new_item_share: float = 0.2


@dataclass
class DriftReport:
    rows: int
    reference_rows: int
    volume_ratio: float
    rating_psi: float
    rating_kl: float
    item_psi: float
    item_kl: float
    genre_psi: float
    new_user_share: float
    new_item_share: float
    mean_rating: float
    reference_mean_rating: float
    reasons: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        return {**asdict(self), "drifted": self.drifted}


def _genre_counts(frame: pl.DataFrame, movies: pl.DataFrame, genres: list[str]) -> np.ndarray:
    exploded = frame.join(movies.select("movie_id", "genres"), on="movie_id", how="left").explode("genres")
    counted = dict(exploded.drop_nulls("genres").group_by("genres").len().iter_rows())
    return np.array([counted.get(g, 0) for g in genres], dtype=np.float64)


def _weeks(frame: pl.DataFrame) -> float:
    """The time a frame's ratings span, in weeks, at least one (a batch of one instant is a week)."""
    first, last = time_range(frame) or (0, 0)
    return max((last - first) / (7 * 86_400), 1.0)


def measure_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    movies: pl.DataFrame,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Compare ``current`` ratings (a batch or recent window) with the ``reference`` (training) ones."""
    thresholds = thresholds or DriftThresholds()
    if reference.is_empty():
        raise ValueError("drift needs reference ratings")
    span_weeks = _weeks(reference)
    current_weeks = _weeks(current)
    volume_ratio = (len(current) / current_weeks) / (len(reference) / span_weeks)

    ref_ratings, cur_ratings = _aligned_counts(reference["rating"], current["rating"], RATING_BINS)
    bins = item_bins(reference)
    ref_items, cur_items = item_counts(reference, bins), item_counts(current, bins)
    genres = sorted({g for gs in movies["genres"].to_list() for g in gs})
    ref_genres, cur_genres = _genre_counts(reference, movies, genres), _genre_counts(current, movies, genres)
    known_users = reference["user_id"].unique().implode()
    known_items = reference["movie_id"].unique().implode()
    rows = max(len(current), 1)
    report = DriftReport(
        rows=len(current),
        reference_rows=len(reference),
        volume_ratio=float(volume_ratio),
        rating_psi=psi(ref_ratings, cur_ratings),
        rating_kl=kl_divergence(cur_ratings, ref_ratings),
        item_psi=psi(ref_items, cur_items),
        item_kl=kl_divergence(cur_items, ref_items),
        genre_psi=psi(ref_genres, cur_genres),
        new_user_share=float(current.filter(~pl.col("user_id").is_in(known_users)).height / rows),
        new_item_share=float(current.filter(~pl.col("movie_id").is_in(known_items)).height / rows),
        mean_rating=number(current["rating"].mean()),
        reference_mean_rating=number(reference["rating"].mean()),
    )
    t = thresholds
    checks = [
        (report.volume_ratio > t.volume_ratio or report.volume_ratio < 1 / t.volume_ratio,
         f"volume {report.volume_ratio:.2f}x the weekly reference (limit {t.volume_ratio}x)"),
        (report.rating_psi > t.rating_psi, f"rating PSI {report.rating_psi:.3f} > {t.rating_psi}"),
        (report.item_psi > t.item_psi, f"item popularity PSI {report.item_psi:.3f} > {t.item_psi}"),
        (report.genre_psi > t.genre_psi, f"genre mix PSI {report.genre_psi:.3f} > {t.genre_psi}"),
        (report.new_user_share > t.new_user_share, f"new users {report.new_user_share:.0%} > {t.new_user_share:.0%}"),
        (report.new_item_share > t.new_item_share, f"new items {report.new_item_share:.0%} > {t.new_item_share:.0%}"),
    ]  # fmt: skip
    report.reasons = [reason for crossed, reason in checks if crossed]
    return report


def rating_shares(frame: pl.DataFrame) -> np.ndarray:
    """Share of ratings per half-star (over RATING_BINS); zeros for an empty frame."""
    counts = dict(frame["rating"].value_counts().iter_rows())
    values = np.array([counts.get(b, 0) for b in RATING_BINS], dtype=np.float64)
    return values / values.sum() if values.sum() else values


def genre_shares(frame: pl.DataFrame, movies: pl.DataFrame) -> dict[str, float]:
    genres = sorted({g for gs in movies["genres"].to_list() for g in gs})
    counts = _genre_counts(frame, movies, genres)
    total = counts.sum()
    return {g: float(c / total) if total else 0.0 for g, c in zip(genres, counts, strict=True)}
