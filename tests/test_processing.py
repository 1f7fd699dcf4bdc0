"""Interactions, temporal splits and features on hand-made data with known answers."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_assets.processing.features import (
    genre_column,
    item_features,
    training_window,
    user_features,
)
from recsys_assets.processing.frames import number, rating_period, time_range
from recsys_assets.processing.interactions import InteractionRules, build_interactions, k_core
from recsys_assets.processing.splits import (
    SplitRules,
    split_summary,
    split_violations,
    temporal_split,
)
from recsys_assets.sources.synthetic import SyntheticConfig, generate

DAY = 86_400


def ratings(rows: list[tuple[int, int, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "user_id": pl.Int32,
            "movie_id": pl.Int32,
            "rating": pl.Float32,
            "timestamp": pl.Int64,
        },
        orient="row",
    )


def test_interactions_threshold_weighting_and_latest_rerating_wins() -> None:
    frame = ratings(
        [
            (1, 10, 5.0, 100),
            (1, 10, 2.0, 200),
            (1, 11, 4.5, 150),
            (2, 10, 4.0, 120),
            (2, 12, 3.5, 130),
        ]
    )
    rules = InteractionRules(
        positive_threshold=4.0,
        weighting="above_threshold",
        min_user_interactions=1,
        min_item_interactions=1,
    )
    result, stats = build_interactions(frame, rules)
    # user 1 re-rated movie 10 down to 2.0 later: no longer a positive.
    assert set(result.select("user_id", "movie_id").rows()) == {(1, 11), (2, 10)}
    weights = dict(zip(result["movie_id"], result["weight"], strict=True))
    assert weights == {11: pytest.approx(1.5), 10: pytest.approx(1.0)}
    assert stats["duplicates_resolved"] == 1 and stats["below_threshold"] == 2


def test_rating_weighting_uses_stars() -> None:
    frame = ratings([(1, 1, 4.5, 1), (1, 2, 5.0, 2)])
    rules = InteractionRules(weighting="rating", min_user_interactions=1, min_item_interactions=1)
    result, _ = build_interactions(frame, rules)
    assert sorted(result["weight"].to_list()) == [4.5, 5.0]


def test_k_core_iterates_until_stable() -> None:
    # Removing item 3 (one user) drops user 2 below 2 interactions, which then drops item 2.
    frame = ratings(
        [
            (1, 1, 5, 1),
            (1, 2, 5, 2),
            (2, 2, 5, 3),
            (2, 3, 5, 4),
            (3, 1, 5, 5),
            (3, 4, 5, 6),
            (4, 1, 5, 7),
            (4, 4, 5, 8),
        ]
    )
    kept, rounds = k_core(frame, min_user=2, min_item=2, max_rounds=10)
    assert set(kept.select("user_id", "movie_id").rows()) == {(3, 1), (3, 4), (4, 1), (4, 4)}
    assert rounds >= 3


def test_invalid_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive_threshold"):
        InteractionRules(positive_threshold=7)
    with pytest.raises(ValueError, match="leave room"):
        SplitRules(strategy="global_cutoff", validation_fraction=0.5, test_fraction=0.5)


@pytest.fixture(scope="module")
def synthetic_interactions() -> pl.DataFrame:
    _, raw = generate(SyntheticConfig(n_users=400, n_movies=500, n_ratings=30_000, seed=11))
    raw = raw.rename({"userId": "user_id", "movieId": "movie_id"})
    return build_interactions(raw, InteractionRules())[0]


@pytest.mark.parametrize(
    "rules", [SplitRules(strategy="global_cutoff"), SplitRules(strategy="leave_last_n", n=2)]
)
def test_splits_partition_without_leaking(synthetic_interactions: pl.DataFrame, rules: SplitRules) -> None:
    splits = temporal_split(synthetic_interactions, rules)
    assert sum(len(f) for f in splits.values()) == len(synthetic_interactions)
    assert all(len(f) > 0 for f in splits.values())
    assert split_violations(splits) == []


def test_global_cutoff_boundaries(synthetic_interactions: pl.DataFrame) -> None:
    splits = temporal_split(
        synthetic_interactions,
        SplitRules(strategy="global_cutoff", validation_fraction=0.1, test_fraction=0.2),
    )
    assert splits["train"]["timestamp"].max() < splits["validation"]["timestamp"].min()
    assert splits["validation"]["timestamp"].max() < splits["test"]["timestamp"].min()
    assert len(splits["test"]) / len(synthetic_interactions) == pytest.approx(0.2, abs=0.01)


def test_leave_last_n_holds_out_each_users_latest() -> None:
    frame = ratings([(1, m, 5.0, m * DAY) for m in range(1, 8)] + [(2, 1, 5.0, DAY), (2, 2, 5.0, 2 * DAY)])
    frame = frame.with_columns(weight=pl.lit(1.0, pl.Float32))
    splits = temporal_split(frame, SplitRules(strategy="leave_last_n", n=2))
    assert sorted(splits["test"]["movie_id"].to_list()) == [6, 7]
    assert sorted(splits["validation"]["movie_id"].to_list()) == [4, 5]
    assert splits["train"].filter(pl.col("user_id") == 2).height == 2  # too few to hold out
    summary = split_summary(splits)
    assert summary["test"]["users"] == 1 and summary["test"]["cold_users"] == 0


def test_violation_detector_catches_a_leak() -> None:
    train = ratings([(1, 1, 5.0, 500)])
    test = ratings([(1, 2, 5.0, 100)])
    problems = split_violations({"train": train, "validation": train.clear(), "test": test})
    assert problems and "earlier than train" in problems[0]


MOVIES = pl.DataFrame(
    {
        "movie_id": [1, 2, 3],
        "title": ["A", "B", "C"],
        "year": [1995, 2000, None],
        "genres": [["Comedy", "Drama"], ["Drama"], []],
    },
    schema_overrides={"movie_id": pl.Int32, "year": pl.Int16},
)


def test_item_and_user_features_by_hand() -> None:
    raw = ratings(
        [(1, 1, 4.0, 10 * DAY), (1, 2, 2.0, 20 * DAY), (2, 1, 5.0, 30 * DAY), (2, 2, 3.0, 40 * DAY)]
    )
    reference = 40 * DAY
    items = {r["movie_id"]: r for r in item_features(MOVIES, raw, reference).to_dicts()}
    assert items[1]["rating_count"] == 2 and items[1]["mean_rating"] == pytest.approx(4.5)
    assert items[1][genre_column("Comedy")] == 1 and items[2][genre_column("Comedy")] == 0
    assert items[1]["days_since_last_rating"] == pytest.approx(10.0)
    assert items[3]["rating_count"] == 0 and items[3]["mean_rating"] is None
    assert items[1]["age_years"] == 1970 - 1995  # reference time is day 40 of 1970
    assert items[1]["popularity_rank"] == 1 and items[3]["popularity_rank"] == 3
    users = {r["user_id"]: r for r in user_features(raw, MOVIES, reference).to_dicts()}
    assert users[1]["n_ratings"] == 2 and users[1]["mean_rating"] == pytest.approx(3.0)
    assert users[1]["active_days"] == pytest.approx(10.0)
    assert users[1]["days_since_last_rating"] == pytest.approx(20.0)
    # user 1 liked (>= own mean 3.0) only movie 1: Comedy and Drama, ties broken by name.
    assert users[1]["top_genres"] == ["Comedy", "Drama"]


def test_training_window_excludes_held_out_period() -> None:
    raw = ratings([(1, 1, 5.0, 1), (1, 2, 1.0, 5), (1, 3, 5.0, 6), (2, 1, 5.0, 7), (2, 3, 2.0, 9)])
    splits = {
        "train": ratings([(1, 1, 5.0, 1), (2, 1, 5.0, 7)]),
        "validation": ratings([]),
        "test": ratings([(1, 3, 5.0, 6)]),
    }
    window = training_window(raw, splits)
    # user 1: nothing from t=6 on; user 2's t=9 rating is after the last training interaction.
    assert sorted(window.select("user_id", "timestamp").rows()) == [(1, 1), (1, 5), (2, 7)]


def test_frame_readers_give_plain_numbers_and_iso_periods() -> None:
    frame = ratings([(1, 10, 4.0, 3 * DAY), (2, 10, 2.0, DAY), (1, 11, 5.0, 2 * DAY)])
    assert time_range(frame) == (DAY, 3 * DAY)
    assert rating_period(frame) == {
        "first_rating": "1970-01-02T00:00:00+00:00",
        "last_rating": "1970-01-04T00:00:00+00:00",
    }
    assert time_range(frame.clear()) is None
    assert rating_period(frame.clear()) == {"first_rating": "", "last_rating": ""}
    assert number(frame["rating"].mean()) == pytest.approx(11 / 3)
    assert number(frame.clear()["rating"].mean(), default=-1.0) == -1.0
    with pytest.raises(TypeError, match="expected a number"):
        number(frame.with_columns(pl.lit("x").alias("rating"))["rating"].max())
