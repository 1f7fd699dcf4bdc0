"""Temporal train / validation / test splits of interactions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from .frames import iso_time, number, time_range

SPLIT_NAMES = ("train", "validation", "test")
Strategy = Literal["global_cutoff", "leave_last_n"]


@dataclass(frozen=True)
class SplitRules:
    """``global_cutoff``: the latest ``test_fraction`` of interactions (by time) is test, the
    ``validation_fraction`` before it validation. ``leave_last_n``: each user's last ``n`` are
    test and the ``n`` before them validation; users with too few interactions stay in train."""

    strategy: Strategy = "leave_last_n"
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    n: int = 2

    def __post_init__(self) -> None:
        if self.strategy not in ("global_cutoff", "leave_last_n"):
            raise ValueError(f"unknown split strategy {self.strategy!r}")
        if not (0 < self.validation_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError("validation_fraction and test_fraction must be between 0 and 1")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must leave room for train")
        if self.n < 1:
            raise ValueError(f"leave_last_n needs n >= 1, got {self.n}")


def temporal_split(interactions: pl.DataFrame, rules: SplitRules) -> dict[str, pl.DataFrame]:
    if interactions.is_empty():
        raise ValueError("cannot split: there are no interactions")
    if rules.strategy == "global_cutoff":
        ts = interactions["timestamp"]
        test_start = int(number(ts.quantile(1 - rules.test_fraction, "lower")))
        val_start = int(number(ts.quantile(1 - rules.test_fraction - rules.validation_fraction, "lower")))
        label = (
            pl.when(pl.col("timestamp") >= test_start)
            .then(pl.lit("test"))
            .when(pl.col("timestamp") >= val_start)
            .then(pl.lit("validation"))
            .otherwise(pl.lit("train"))
        )
    else:
        # Newest first; ties broken by movie id so the split is deterministic.
        recency = (
            pl.struct(pl.col("timestamp"), pl.col("movie_id"))
            .rank("ordinal", descending=True)
            .over("user_id")
        )
        eligible = pl.len().over("user_id") > 2 * rules.n
        label = (
            pl.when(eligible & (recency <= rules.n))
            .then(pl.lit("test"))
            .when(eligible & (recency <= 2 * rules.n))
            .then(pl.lit("validation"))
            .otherwise(pl.lit("train"))
        )
    labelled = interactions.with_columns(label.alias("_split"))
    return {name: labelled.filter(pl.col("_split") == name).drop("_split") for name in SPLIT_NAMES}


def split_summary(splits: dict[str, pl.DataFrame]) -> dict[str, dict]:
    train_users = splits["train"]["user_id"].unique()
    summary = {}
    for name, frame in splits.items():
        first, last = time_range(frame) or (None, None)
        summary[name] = {
            "interactions": len(frame),
            "users": frame["user_id"].n_unique(),
            "items": frame["movie_id"].n_unique(),
            "first": iso_time(first),
            "last": iso_time(last),
        }
        if name != "train":
            cold = frame.filter(~pl.col("user_id").is_in(train_users.implode()))["user_id"]
            summary[name]["cold_users"] = cold.n_unique()
    return summary


def split_violations(splits: dict[str, pl.DataFrame]) -> list[str]:
    """Ways the split leaks the future; an empty list means it is sound."""
    problems = []
    last_train = splits["train"].group_by("user_id").agg(pl.col("timestamp").max().alias("t_train"))
    for later in ("validation", "test"):
        joined = splits[later].join(last_train, on="user_id")
        leaked = joined.filter(pl.col("timestamp") < pl.col("t_train"))
        if len(leaked):
            problems.append(
                f"{len(leaked)} {later} interactions are earlier than train ones of the same user"
            )
    first_test = splits["test"].group_by("user_id").agg(pl.col("timestamp").min().alias("t_test"))
    leaked = (
        splits["validation"].join(first_test, on="user_id").filter(pl.col("timestamp") > pl.col("t_test"))
    )
    if len(leaked):
        problems.append(f"{len(leaked)} validation interactions are later than test ones of the same user")
    keys = pl.concat([f.select("user_id", "movie_id") for f in splits.values()])
    if keys.is_duplicated().any():
        problems.append("a (user, movie) pair appears in more than one split")
    return problems
