"""Off-policy evaluation on explored traffic: how a candidate bundle would have done on requests
another bundle answered, from the propensities the API logged (experiments with epsilon > 0).

Each logged place is one decision: the logging policy showed movie ``a`` in place ``i`` with
probability ``p``; the reward is 1 when the user rated ``a`` positively within the horizon. A
deterministic candidate that would have put ``a`` in place ``i`` has probability 1 there, else 0,
so IPS = mean(reward * 1[candidate agrees] / p) and the self-normalised estimate divides by the
sum of the weights instead of the count.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import polars as pl

from ..processing.frames import number
from .stats import ips


def logged_places(log: pl.DataFrame) -> pl.DataFrame:
    """Every place of every explored, answered known-user request: request_id, user_id, at,
    bundle_version, arm, place (0-based), movie_id and its propensity."""
    explored = log.filter(
        (pl.col("status") == 200) & (pl.col("epsilon") > 0) & pl.col("user_id").is_not_null()
    )
    rows = []
    for request_id, user_id, at, version, arm, items in explored.select(
        "request_id", "user_id", pl.coalesce("simulated_ts", "ts"), "bundle_version", "arm", "items"
    ).iter_rows():
        for place, item in enumerate(json.loads(items)):
            rows.append((request_id, user_id, at, version, arm, place, int(item[0]), float(item[3])))
    schema = {
        "request_id": pl.String,
        "user_id": pl.Int64,
        "at": pl.Float64,
        "bundle_version": pl.String,
        "arm": pl.String,
        "place": pl.Int64,
        "movie_id": pl.Int64,
        "propensity": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def place_rewards(
    places: pl.DataFrame, ratings: pl.DataFrame, horizon_days: float = 30, positive_threshold: float = 4.0
) -> pl.DataFrame:
    """``places`` with ``reward``: 1 when the user rated the movie positively within the horizon."""
    later = (
        places.select("request_id", "user_id", "movie_id", "at")
        .join(ratings.select("user_id", "movie_id", "rating", "timestamp"), on=["user_id", "movie_id"])
        .filter(
            pl.col("timestamp").is_between(pl.col("at"), pl.col("at") + horizon_days * 86_400, closed="right")
            & (pl.col("rating") >= positive_threshold)
        )
        .select("request_id", "movie_id")
        .unique()
        .with_columns(pl.lit(1.0).alias("reward"))
    )
    return places.join(later, on=["request_id", "movie_id"], how="left").with_columns(
        pl.col("reward").fill_null(0.0)
    )


def off_policy_value(rewarded: pl.DataFrame, candidate: Callable[[int, int], list[int]]) -> dict[str, float]:
    """IPS and self-normalised IPS of a deterministic ``candidate`` (user_id, k -> movie ids in
    order) on the logged places, beside the logging policy's own mean reward."""
    k = int(number(rewarded.group_by("request_id").len()["len"].max()))
    lists = {user: candidate(user, k) for user in rewarded["user_id"].unique().to_list()}
    agrees = np.array(
        [
            place < len(lists[user]) and lists[user][place] == movie
            for user, place, movie in rewarded.select("user_id", "place", "movie_id").iter_rows()
        ],
        dtype=np.float64,
    )
    rewards = rewarded["reward"].to_numpy()
    estimate, normalised = ips(rewards, agrees, rewarded["propensity"].to_numpy())
    return {
        "places": float(len(rewarded)),
        "requests": float(rewarded["request_id"].n_unique()),
        "logging_policy": float(rewards.mean()) if len(rewards) else float("nan"),
        "ips": estimate,
        "snips": normalised,
        "agreement": float(agrees.mean()) if len(agrees) else float("nan"),
    }
