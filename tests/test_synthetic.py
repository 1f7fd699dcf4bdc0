"""The synthetic MovieLens: deterministic, MovieLens-shaped, and learnable by collaborative filtering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.processing.splits import SplitRules, temporal_split
from recsys_assets.sources.formats import read_movies, read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, generate, write_dataset

SMALL = SyntheticConfig(n_users=300, n_movies=600, n_ratings=20_000, seed=7)


@pytest.fixture(scope="module")
def small() -> tuple[pl.DataFrame, pl.DataFrame]:
    return generate(SMALL)


def test_deterministic_for_a_seed(small: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    movies, ratings = generate(SMALL)
    assert movies.equals(small[0]) and ratings.equals(small[1])
    _, other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    assert not other.equals(ratings)


def test_movielens_shape(small: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    movies, ratings = small
    assert abs(len(ratings) - SMALL.n_ratings) <= SMALL.n_ratings * 0.02
    assert ratings.select("userId", "movieId").is_unique().all()
    assert set(ratings["rating"].unique().to_list()) <= {x / 2 for x in range(1, 11)}
    assert 3.0 < ratings["rating"].mean() < 4.2
    assert ratings["movieId"].is_in(movies["movieId"].implode()).all()
    span_days = (ratings["timestamp"].max() - ratings["timestamp"].min()) / 86_400
    assert span_days > 3 * 365  # years of history, for temporal splits and streaming
    assert movies["title"].str.contains(r"\(\d{4}\)$").all()


def test_long_tails_at_default_size() -> None:
    _, ratings = generate(SyntheticConfig())
    per_item = ratings.group_by("movieId").len()["len"].sort(descending=True)
    assert per_item.head(len(per_item) // 10).sum() > 0.4 * len(ratings)  # ml-latest-small: 0.6
    per_user = ratings.group_by("userId").len()["len"]
    assert per_user.max() > 10 * per_user.median()


def test_files_round_trip_through_the_movielens_reader(tmp_path: Path) -> None:
    directory = write_dataset(SMALL, tmp_path / "synthetic")
    movies, ratings = read_movies(directory), read_ratings(directory)
    expected_movies, expected_ratings = generate(SMALL)
    assert len(ratings) == len(expected_ratings) and len(movies) == len(expected_movies)
    assert ratings["rating"].sum() == pytest.approx(expected_ratings["rating"].sum())
    assert movies["year"].null_count() == 0 and movies["genres"].list.len().min() >= 1


def test_config_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="more than half"):
        SyntheticConfig(n_users=10, n_movies=10, n_ratings=1_000)
    with pytest.raises(ValueError, match="n_users"):
        SyntheticConfig(n_users=0)


def _recall_at_10(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    scores = scores.astype(np.float64).copy()
    scores[train.nonzero()] = -np.inf
    rows = np.flatnonzero(test.getnnz(axis=1))
    top = np.argpartition(-scores[rows], 10, axis=1)[:, :10]
    hits = np.take_along_axis(test[rows].toarray(), top, axis=1).sum(axis=1)
    return float((hits / test[rows].getnnz(axis=1)).mean())


def test_collaborative_filtering_beats_popularity() -> None:
    """EASE (closed-form item model) must clearly beat most-popular on held-out interactions."""
    _, ratings = generate(SyntheticConfig(seed=3))
    ratings = ratings.rename({"userId": "user_id", "movieId": "movie_id"})
    interactions, _ = build_interactions(ratings, InteractionRules())
    splits = temporal_split(interactions, SplitRules(strategy="leave_last_n", n=2))
    users = {u: i for i, u in enumerate(interactions["user_id"].unique().sort())}
    items = {m: i for i, m in enumerate(splits["train"]["movie_id"].unique().sort())}

    def matrix(frame: pl.DataFrame) -> sp.csr_matrix:
        frame = frame.filter(pl.col("movie_id").is_in(list(items)))
        rows = [users[u] for u in frame["user_id"]]
        cols = [items[m] for m in frame["movie_id"]]
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(items)))

    train, test = matrix(splits["train"]), matrix(splits["test"])
    gram = (train.T @ train).toarray() + 200.0 * np.eye(len(items))
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    popularity = np.tile(np.asarray(train.sum(axis=0)), (len(users), 1))
    ease, popular = (
        _recall_at_10(train @ weights, train, test),
        _recall_at_10(popularity, train, test),
    )
    assert ease > 1.3 * popular, (ease, popular)
