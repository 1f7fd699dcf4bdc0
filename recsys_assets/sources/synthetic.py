"""A synthetic MovieLens: deterministic, vectorised, realistic enough that collaborative filtering wins.

How a rating comes about:
- movies get 1-3 genres, a release year and a long-tailed (Zipf) popularity; hidden item factors
  mix their genres' centroids with item-specific noise;
- users get a genre taste, hidden factors built from it, a heavy-tailed (log-normal) activity and an
  active period somewhere in the dataset's time span (many rate in one session, some for years);
- each user weighs a pool of candidate movies (``pool_factor`` per rating they make) drawn by
  popularity among movies released before their last active day, and rates the ones that fit
  their taste best (a Gumbel top-k over affinity and popularity: sampling without replacement),
  so what a user rates depends on who they are, not only on what is popular; each rating's time
  falls in the user's active period, after the movie's release;
- the star value follows affinity, user bias and item quality, on the half-star scale (whole stars
  only before 2003-02-18, as on the real MovieLens);
- a share of ratings (``tags_per_rating``) comes with a user tag (``tags.csv``), drawn from a fixed
  vocabulary by how well each tag's hidden direction fits the movie's hidden factors, so tags
  carry what genres do not (the content model for new movies learns from them).

Everything is numpy over arrays in chunks of users; nothing loops in Python per rating or user.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from ..storage import publish_directory

GENRE_WEIGHTS = {
    "Drama": 0.24, "Comedy": 0.19, "Thriller": 0.09, "Action": 0.09, "Romance": 0.08,
    "Adventure": 0.06, "Crime": 0.06, "Horror": 0.05, "Documentary": 0.05, "Sci-Fi": 0.05,
    "Mystery": 0.03, "Fantasy": 0.03, "Children": 0.03, "Animation": 0.03, "War": 0.02,
    "Musical": 0.015, "Western": 0.01, "Film-Noir": 0.005, "IMAX": 0.005,
}  # fmt: skip
_ADJECTIVES = [
    "Silent",
    "Broken",
    "Last",
    "Hidden",
    "Golden",
    "Crimson",
    "Lonely",
    "Secret",
    "Endless",
    "Wild",
    "Frozen",
    "Dark",
    "Lost",
    "Bright",
    "Midnight",
    "Electric",
    "Savage",
    "Gentle",
    "Final",
    "Distant",
    "Hollow",
    "Burning",
    "Quiet",
    "Iron",
    "Paper",
    "Velvet",
    "Forgotten",
]
_NOUNS = [
    "Harbor",
    "River",
    "Kingdom",
    "Promise",
    "Garden",
    "Station",
    "Empire",
    "Shadow",
    "Horizon",
    "Machine",
    "Summer",
    "Winter",
    "Road",
    "Island",
    "Letter",
    "Stranger",
    "Circus",
    "Frontier",
    "Memory",
    "Signal",
    "Orchard",
    "Tide",
    "Voyage",
    "Witness",
    "Lantern",
    "Echo",
]
TAG_VOCABULARY = (
    "atmospheric", "twist ending", "dark comedy", "visually stunning", "slow burn", "feel-good",
    "cult classic", "quirky", "thought-provoking", "based on a book", "great soundtrack",
    "strong female lead", "violent", "heartwarming", "mind-bending", "satire", "nonlinear",
    "dystopia", "coming of age", "true story", "space", "time travel", "heist", "revenge",
    "road trip", "small town", "friendship", "survival", "conspiracy", "family", "musicians",
    "politics", "surreal", "bleak", "witty dialogue", "epic", "underrated", "overrated",
    "predictable", "classic",
)  # fmt: skip
HALF_STARS_SINCE = int(datetime(2003, 2, 18, tzinfo=UTC).timestamp())
_DAY = 86_400


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 1_000
    n_movies: int = 3_000
    n_ratings: int = 100_000
    seed: int = 42
    n_factors: int = 16
    start: str = "2010-01-01"
    end: str = "2019-12-31"
    popularity_exponent: float = 1.2  # Zipf exponent of item popularity
    taste_strength: float = 6.0  # how strongly affinity (vs. popularity) decides what is rated
    pool_factor: int = 8  # candidate movies weighed per rating a user makes
    tags_per_rating: float = 0.03  # share of ratings that come with a user tag

    def __post_init__(self) -> None:
        for name in ("n_users", "n_movies", "n_ratings", "n_factors", "pool_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic {name} must be at least 1, got {getattr(self, name)}")
        if self.n_ratings > self.n_users * self.n_movies // 2:
            raise ValueError(
                f"synthetic n_ratings={self.n_ratings} is more than half of all "
                f"{self.n_users} x {self.n_movies} user-movie pairs: add users or movies"
            )
        if self._ts(self.end) <= self._ts(self.start):
            raise ValueError(f"synthetic end {self.end} must be after start {self.start}")

    @staticmethod
    def _ts(day: str) -> int:
        return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())

    @property
    def start_ts(self) -> int:
        return self._ts(self.start)

    @property
    def end_ts(self) -> int:
        return self._ts(self.end) + _DAY - 1

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return f"synthetic-{self.fingerprint()}"


def _movies(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, genres = cfg.n_movies, list(GENRE_WEIGHTS)
    weights = np.array(list(GENRE_WEIGHTS.values()))
    # Weighted sampling without replacement per movie: Gumbel top-k, keep the first 1-3 ranks.
    keys = np.log(weights)[None, :] + rng.gumbel(size=(n, len(genres)))
    order = np.argsort(-keys, axis=1)[:, :3]
    n_genres = 1 + rng.binomial(2, 0.35, size=n)
    multi_hot = np.zeros((n, len(genres)), dtype=bool)
    rows = np.repeat(np.arange(n), 3)
    keep = (np.arange(3)[None, :] < n_genres[:, None]).ravel()
    multi_hot[rows[keep], order.ravel()[keep]] = True

    end_year = datetime.fromtimestamp(cfg.end_ts, UTC).year
    start_year = datetime.fromtimestamp(cfg.start_ts, UTC).year
    recent = rng.integers(start_year - 15, end_year + 1, size=n)
    classic = rng.integers(1920, start_year - 15, size=n) if start_year - 15 > 1920 else recent
    year = np.where(rng.random(n) < 0.7, recent, classic)
    release_ts = (
        np.array([SyntheticConfig._ts(f"{y}-01-01") for y in range(1920, end_year + 1)])[year - 1920]
        + rng.integers(0, 365, size=n) * _DAY
    )
    available = np.clip(release_ts, cfg.start_ts, cfg.end_ts - _DAY)

    rank = rng.permutation(n)
    popularity = (rank + 1.0) ** -cfg.popularity_exponent
    ids = np.sort(rng.choice(np.arange(1, 3 * n + 1), size=n, replace=False)).astype(np.int32)

    adjectives = rng.integers(0, len(_ADJECTIVES), size=n)
    nouns = rng.integers(0, len(_NOUNS), size=n)
    has_article = rng.random(n) < 0.3
    titles = [
        f"{_ADJECTIVES[a]} {_NOUNS[b]}, The ({y})" if art else f"{_ADJECTIVES[a]} {_NOUNS[b]} ({y})"
        for a, b, art, y in zip(adjectives, nouns, has_article, year, strict=True)
    ]
    genre_names = np.array(genres)
    genre_strings = ["|".join(genre_names[row]) for row in multi_hot]
    return {
        "ids": ids,
        "titles": np.array(titles),
        "genres": np.array(genre_strings),
        "multi_hot": multi_hot,
        "available": available,
        "popularity": popularity,
    }


def _user_counts(cfg: SyntheticConfig, rng: np.random.Generator, target: int) -> np.ndarray:
    """Heavy-tailed (log-normal) ratings per user that add up to ``target``.

    Like MovieLens, every user has a floor of ratings (20 when the size allows); nobody rates more
    than half the catalogue, and what the cap cuts off is spread over the other users.
    """
    floor = int(min(20, max(1, target // (3 * cfg.n_users))))
    room = max(floor, cfg.n_movies // 2) - floor
    weights = rng.lognormal(0.0, 1.1, size=cfg.n_users)
    to_spread = max(target - floor * cfg.n_users, 0)
    capped = np.zeros(cfg.n_users, dtype=bool)
    for _ in range(20):
        free_weight = np.where(capped, 0.0, weights)
        extra = free_weight / free_weight.sum() * (to_spread - room * capped.sum())
        newly = ~capped & (extra > room)
        if not newly.any():
            break
        capped |= newly
    extra = np.where(capped, room, extra)
    whole = np.floor(extra)
    return floor + whole.astype(np.int64) + (rng.random(cfg.n_users) < extra - whole)


def generate(cfg: SyntheticConfig, progress: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return ``(movies, ratings)`` in MovieLens CSV column names (movieId, userId, ...)."""
    movies, ratings, _ = generate_with_tags(cfg, progress)
    return movies, ratings


def _tags(
    cfg: SyntheticConfig, item_f: np.ndarray, users: np.ndarray, chosen: np.ndarray, stamps: np.ndarray
) -> pl.DataFrame:
    """User tags on a share of the ratings, each drawn (Gumbel-max) by its fit to the movie's
    hidden factors. A separate generator, so adding tags left the ratings as they were."""
    rng = np.random.default_rng([cfg.seed, 1])
    tagged = np.flatnonzero(rng.random(len(users)) < cfg.tags_per_rating)
    directions = rng.normal(size=(len(TAG_VOCABULARY), cfg.n_factors)).astype(np.float32)
    norms = np.linalg.norm(item_f, axis=1, keepdims=True) + 1e-9
    picked = np.empty(len(tagged), dtype=np.int64)
    for start in range(0, len(tagged), 500_000):
        block = tagged[start : start + 500_000]
        logits = 4.0 * (item_f[chosen[block]] / norms[chosen[block]]) @ directions.T
        picked[start : start + len(block)] = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return pl.DataFrame(
        {
            "userId": (users[tagged] + 1).astype(np.int32),
            "movieId_row": chosen[tagged],
            "tag": np.array(TAG_VOCABULARY)[picked],
            "timestamp": stamps[tagged] + rng.integers(1, 600, size=len(tagged)),
        }
    )


def generate_with_tags(
    cfg: SyntheticConfig, progress: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``(movies, ratings, tags)`` in MovieLens CSV column names."""
    rng = np.random.default_rng(cfg.seed)
    movies = _movies(cfg, rng)
    n_genres = movies["multi_hot"].shape[1]

    centroids = rng.normal(size=(n_genres, cfg.n_factors))
    hot = movies["multi_hot"].astype(np.float64)
    item_f = hot @ centroids / np.sqrt(hot.sum(1, keepdims=True)) + 0.8 * rng.normal(
        size=(cfg.n_movies, cfg.n_factors)
    )
    taste = rng.dirichlet(np.full(n_genres, 0.3), size=cfg.n_users)
    user_f = taste @ centroids * 2.0 + 0.8 * rng.normal(size=(cfg.n_users, cfg.n_factors))
    scale = 1.0 / np.sqrt(cfg.n_factors)
    item_f, user_f = (item_f * scale).astype(np.float32), (user_f * scale).astype(np.float32)
    user_bias = rng.normal(0, 0.35, size=cfg.n_users).astype(np.float32)
    item_quality = rng.normal(0, 0.45, size=cfg.n_movies).astype(np.float32)

    counts = _user_counts(cfg, rng, cfg.n_ratings)
    span = cfg.end_ts - cfg.start_ts
    user_start = cfg.start_ts + (rng.random(cfg.n_users) ** 0.8 * span * 0.97).astype(np.int64)
    one_session = rng.random(cfg.n_users) < 0.35
    duration = np.where(
        one_session,
        rng.lognormal(np.log(3600), 1.0, cfg.n_users),
        rng.lognormal(np.log(200 * _DAY), 1.2, cfg.n_users),
    )
    user_end = np.minimum(user_start + duration.astype(np.int64), cfg.end_ts)

    # Candidate pools are drawn from a flattened popularity (pop^0.5) among movies released before
    # the user's last day; the other half of the popularity weight goes into the selection score.
    by_release = np.argsort(movies["available"], kind="stable")
    released_at = movies["available"][by_release]
    log_pop = np.log(movies["popularity"])
    cumulative = np.cumsum(np.sqrt(movies["popularity"][by_release]))
    pool_sizes = cfg.pool_factor * counts + 20

    parts: list[tuple[np.ndarray, ...]] = []
    bounds = np.searchsorted(np.cumsum(pool_sizes), np.arange(0, pool_sizes.sum(), 4_000_000))
    bounds = np.unique(np.append(bounds, cfg.n_users))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        u = np.repeat(np.arange(lo, hi, dtype=np.int64), pool_sizes[lo:hi])
        n_released = np.maximum(np.searchsorted(released_at, user_end[u], side="right"), 1)
        draw = rng.random(len(u)) * cumulative[n_released - 1]
        cand = by_release[np.minimum(np.searchsorted(cumulative, draw), cfg.n_movies - 1)]
        _, first = np.unique(u * cfg.n_movies + cand, return_index=True)
        u, cand = u[first], cand[first]
        affinity = (user_f[u] * item_f[cand]).sum(axis=1)
        score = cfg.taste_strength * affinity + 0.5 * log_pop[cand] + rng.gumbel(size=len(u))
        by_score = np.argsort(-score)
        order = by_score[np.argsort(u[by_score], kind="stable")]  # user, then score descending
        u, cand, affinity = u[order], cand[order], affinity[order]
        rank = np.arange(len(u)) - np.searchsorted(u, u, side="left")
        keep = rank < counts[u]
        parts.append((u[keep], cand[keep], affinity[keep]))
        if progress:
            print(f"\rsynthetic: {hi:,}/{cfg.n_users:,} users", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    users, chosen, affinity = (np.concatenate(column) for column in zip(*parts, strict=True))

    first_day = np.maximum(user_start[users], movies["available"][chosen])
    stamps = first_day + (rng.random(len(users)) * (user_end[users] - first_day)).astype(np.int64)
    score = affinity + user_bias[users] + item_quality[chosen]
    raw = 3.4 + 0.9 * score + rng.normal(0, 0.55, size=len(users))
    step = np.where(stamps >= HALF_STARS_SINCE, 2.0, 1.0)
    stars = np.clip(np.round(raw * step) / step, np.where(step == 2.0, 0.5, 1.0), 5.0)

    ratings = pl.DataFrame(
        {
            "userId": (users + 1).astype(np.int32),
            "movieId": movies["ids"][chosen],
            "rating": stars.astype(np.float32),
            "timestamp": stamps,
        }
    ).sort(["userId", "timestamp"])
    movie_frame = pl.DataFrame(
        {"movieId": movies["ids"], "title": movies["titles"], "genres": movies["genres"]}
    )
    tags = _tags(cfg, item_f, users, chosen, stamps)
    tags = tags.select(
        "userId", pl.Series("movieId", movies["ids"][tags["movieId_row"].to_numpy()]), "tag", "timestamp"
    ).sort(["userId", "timestamp"])
    return movie_frame, ratings, tags


def write_dataset(cfg: SyntheticConfig, directory: Path, progress: bool = False) -> Path:
    """Write ``movies.csv``, ``ratings.csv``, ``tags.csv`` and a README into ``directory`` atomically."""
    directory = Path(directory)
    if (directory / "ratings.csv").is_file() and (directory / "movies.csv").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    movies, ratings, tags = generate_with_tags(cfg, progress=progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        movies.write_csv(staging / "movies.csv")
        ratings.write_csv(staging / "ratings.csv", float_precision=1)
        tags.write_csv(staging / "tags.csv")
        (staging / "synthetic.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (staging / "README.txt").write_text(
            "Synthetic MovieLens-format data generated by recsys_assets.sources.synthetic.\n"
            f"{len(ratings):,} ratings by {ratings['userId'].n_unique():,} users on "
            f"{len(movies):,} movies, {len(tags):,} tags; parameters in synthetic.json. "
            "Not real user data.\n"
        )
        publish_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic MovieLens-format dataset.")
    parser.add_argument("out", type=Path, help="directory to create")
    defaults = SyntheticConfig()
    parser.add_argument("--users", type=int, default=defaults.n_users)
    parser.add_argument("--movies", type=int, default=defaults.n_movies)
    parser.add_argument("--ratings", type=int, default=defaults.n_ratings)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    cfg = SyntheticConfig(n_users=args.users, n_movies=args.movies, n_ratings=args.ratings, seed=args.seed)
    started = datetime.now()
    if args.out.exists():
        parser.error(f"{args.out} already exists")
    write_dataset(cfg, args.out, progress=True)
    seconds = (datetime.now() - started).total_seconds()
    print(f"wrote {args.out} in {seconds:.1f}s")


if __name__ == "__main__":
    main()
