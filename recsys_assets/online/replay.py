"""Served lists against the ratings that came after them (replay evaluation), and serving KPIs,
from the API's request log. Pure polars/numpy: the assets in ``defs/online.py`` call these.

Replay evaluation measures whether the users later *rated* what they were served, within a
horizon after the request: only rated movies count as hits, and since the ratings were recorded
before this service existed the served list influenced none of them. It ranks models by how well
they anticipate what users go on to watch, not by what they cause.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl

from ..modeling.evaluation import bootstrap_ci
from ..processing.frames import number, time_range

GROUP = ("bundle_version", "arm")
LOG_COLUMNS = {
    "request_id": pl.String,
    "ts": pl.Float64,
    "route": pl.String,
    "user_id": pl.Int64,
    "cold_start": pl.Int64,
    "strategy": pl.String,
    "k": pl.Int64,
    "items": pl.String,
    "bundle_version": pl.String,
    "latency_ms": pl.Float64,
    "status": pl.Int64,
    "experiment_id": pl.String,
    "arm": pl.String,
    "simulated_ts": pl.Float64,
    "epsilon": pl.Float64,
}


def read_request_log(path: Path, arrived: tuple[float, float] | None = None) -> pl.DataFrame:
    """Every logged request, or those that arrived in ``[start, end)`` (unix seconds, the server's
    clock; filtered in SQLite, so a day of a long log does not read the whole log). An empty frame
    when the log does not exist yet."""
    if not Path(path).is_file():
        return pl.DataFrame(schema=LOG_COLUMNS)
    query, window = ("", ()) if arrived is None else (" WHERE ts >= ? AND ts < ?", arrived)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        present = [row[1] for row in connection.execute("PRAGMA table_info(requests)")]
        rows = connection.execute(f"SELECT {', '.join(present)} FROM requests{query}", window).fetchall()
    frame = pl.DataFrame(rows, schema={name: LOG_COLUMNS[name] for name in present}, orient="row")
    missing = [
        pl.lit(None, dtype=kind).alias(name) for name, kind in LOG_COLUMNS.items() if name not in present
    ]
    return frame.with_columns(missing).select(list(LOG_COLUMNS))


def served_lists(log: pl.DataFrame) -> pl.DataFrame:
    """Answered known-user requests: request_id, user_id, at (the simulated time when the request
    carried one, else when it arrived), bundle_version, experiment_id, arm, k and the served movie
    ids in rank order."""
    answered = log.filter(
        (pl.col("status") == 200) & pl.col("user_id").is_not_null() & pl.col("items").is_not_null()
    )
    movies = [[int(item[0]) for item in json.loads(text)] for text in answered["items"].to_list()]
    return answered.select(
        "request_id",
        "user_id",
        pl.coalesce("simulated_ts", "ts").alias("at"),
        pl.col("bundle_version").fill_null("unknown"),
        "experiment_id",
        pl.col("arm").fill_null("none"),
        "k",
        "strategy",
    ).with_columns(pl.Series("movies", movies, dtype=pl.List(pl.Int64)))


def replayed_for(served: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
    """The served requests a batch's ratings answer: by users who rate in the batch, at a time
    from one second before its first rating (recsys-replay stamps each user's request one second
    before their first rating in the batch) to its last."""
    if batch.is_empty():
        return served.clear()
    first, last = time_range(batch) or (0, 0)
    return served.filter(
        pl.col("user_id").is_in(batch["user_id"].unique().implode())
        & pl.col("at").is_between(first - 1, last)
    )


def replay_metrics(
    served: pl.DataFrame, ratings: pl.DataFrame, horizon_days: float = 30, positive_threshold: float = 4.0
) -> pl.DataFrame:
    """Per request: the movies of its list the user rated positively within ``horizon_days`` after
    it (hits), precision@k, NDCG@k (binary gains, ideal over min(later positives, k)), hit rate,
    and whether the user later rated anything served at all."""
    horizon = horizon_days * 86_400
    ranked = (
        served.select("request_id", "user_id", "at", "movies")
        .explode("movies")
        .rename({"movies": "movie_id"})
    )
    ranked = ranked.with_columns(pl.int_range(pl.len()).over("request_id").alias("rank"))
    window = pl.col("timestamp").is_between(pl.col("at"), pl.col("at") + horizon, closed="right")
    later = (
        served.select("request_id", "user_id", "at")
        .join(ratings.select("user_id", "movie_id", "rating", "timestamp"), on="user_id")
        .filter(window)
    )
    positives = later.filter(pl.col("rating") >= positive_threshold)
    n_positive = positives.group_by("request_id").agg(pl.col("movie_id").n_unique().alias("later_positives"))
    hit_rows = ranked.join(positives.select("request_id", "movie_id").unique(), on=["request_id", "movie_id"])
    hits = hit_rows.group_by("request_id").agg(
        pl.len().alias("hits"), (1.0 / (pl.col("rank") + 2).log(2)).sum().alias("dcg")
    )
    rated_any = (
        ranked.join(later.select("request_id", "movie_id").unique(), on=["request_id", "movie_id"])
        .group_by("request_id")
        .agg(pl.len().alias("rated_served"))
    )
    out = (
        served.drop("movies")
        .join(hits, on="request_id", how="left")
        .join(n_positive, on="request_id", how="left")
        .join(rated_any, on="request_id", how="left")
        .with_columns(pl.col("hits", "dcg", "later_positives", "rated_served").fill_null(0))
    )
    ideal = _ideal_dcg(out["later_positives"].to_numpy(), out["k"].to_numpy())
    return out.with_columns(
        (pl.col("hits") / pl.col("k")).alias("precision"),
        (pl.col("hits") > 0).cast(pl.Float64).alias("hit_rate"),
        pl.Series("ndcg", np.divide(out["dcg"].to_numpy(), ideal, out=np.zeros(len(out)), where=ideal > 0)),
        (pl.col("rated_served") > 0).cast(pl.Float64).alias("rated_something_served"),
    )


def _ideal_dcg(n_relevant: np.ndarray, k: np.ndarray) -> np.ndarray:
    depth = np.minimum(n_relevant, k).astype(int)
    prefix = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, int(k.max(initial=1)) + 2)))])
    return prefix[depth]


REPLAY_METRICS = ("hit_rate", "precision", "ndcg", "rated_something_served")


def per_user(metrics: pl.DataFrame, by: tuple[str, ...] = GROUP) -> pl.DataFrame:
    """Each user's mean of every replay metric over their requests, per group: the unit of the
    intervals and of an A/B test is the user, not the request."""
    return metrics.group_by([*by, "user_id"]).agg(
        *(pl.col(m).mean() for m in REPLAY_METRICS), pl.len().alias("requests")
    )


def summarise(users: pl.DataFrame, by: tuple[str, ...] = GROUP, n_boot: int = 1000) -> pl.DataFrame:
    """Per group: users, requests and every metric's mean over users with a 95% bootstrap interval."""
    rows = []
    for key, group in users.group_by(list(by), maintain_order=True):
        values = {m: group[m].to_numpy() for m in REPLAY_METRICS}
        intervals = bootstrap_ci(values, n_boot=n_boot) if len(group) > 1 else {}
        row = dict(zip(by, key, strict=True)) | {
            "users": len(group),
            "requests": int(group["requests"].sum()),
        }
        for metric, array in values.items():
            low, high = intervals.get(metric, (float("nan"), float("nan")))
            row |= {metric: float(array.mean()), f"{metric}_low": low, f"{metric}_high": high}
        rows.append(row)
    return pl.DataFrame(rows).sort(list(by)) if rows else pl.DataFrame()


def kpis_by_group(
    log: pl.DataFrame, movies: pl.DataFrame, ratings: pl.DataFrame, by: tuple[str, ...] = GROUP
) -> pl.DataFrame:
    """Per group: traffic, error and fallback rates, latency percentiles, and what was served —
    catalogue coverage, novelty (mean -log2 of each served movie's share of ratings), intra-list
    diversity (mean pairwise genre Jaccard distance) and popularity bias (Gini of served counts)."""
    log = log.with_columns(pl.col("bundle_version").fill_null("unknown"), pl.col("arm").fill_null("none"))
    share = (
        ratings.group_by("movie_id").len().with_columns((pl.col("len") / pl.col("len").sum()).alias("share"))
    )
    novelty_of = dict(
        zip(share["movie_id"].to_list(), (-np.log2(share["share"].to_numpy())).tolist(), strict=True)
    )
    unseen_novelty = float(-np.log2(1 / max(len(ratings), 1)))
    genres_of = {
        m: set(g or []) for m, g in zip(movies["movie_id"].to_list(), movies["genres"].to_list(), strict=True)
    }
    rows = []
    for key, group in log.group_by(list(by), maintain_order=True):
        lists = [[int(i[0]) for i in json.loads(text)] for text in group["items"].drop_nulls().to_list()]
        served = [m for items in lists for m in items]
        counts = np.array(list(_counts(served).values()), dtype=np.float64)
        latency = group["latency_ms"].to_numpy()
        strategies = group["strategy"].drop_nulls()
        rows.append(
            dict(zip(by, key, strict=True))
            | {
                "requests": len(group),
                "error_rate": number((group["status"] >= 500).mean()),
                "client_error_rate": number(((group["status"] >= 400) & (group["status"] < 500)).mean()),
                "latency_p50_ms": float(np.percentile(latency, 50)),
                "latency_p95_ms": float(np.percentile(latency, 95)),
                "latency_p99_ms": float(np.percentile(latency, 99)),
                "fallback_share": number((strategies == "popular_fallback").mean())
                if len(strategies)
                else 0.0,
                "coverage": len(set(served)) / max(len(movies), 1),
                "novelty": float(np.mean([novelty_of.get(m, unseen_novelty) for m in served]))
                if served
                else 0.0,
                "intra_list_diversity": _diversity(lists, genres_of),
                "gini": gini(counts),
            }
        )
    return pl.DataFrame(rows).sort(list(by)) if rows else pl.DataFrame()


def _counts(values: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of how often each served movie was served (0: all equally, towards 1: a few)."""
    if counts.size == 0 or counts.sum() == 0:
        return 0.0
    ordered = np.sort(counts)
    n = ordered.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ ordered / (n * ordered.sum()))


def _diversity(lists: list[list[int]], genres_of: dict[int, set[str]]) -> float:
    """Mean over lists of the mean pairwise Jaccard distance between the movies' genre sets."""
    values = []
    for items in lists:
        distances = []
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                a, b = genres_of.get(items[i], set()), genres_of.get(items[j], set())
                union = a | b
                distances.append(1 - len(a & b) / len(union) if union else 0.0)
        if distances:
            values.append(float(np.mean(distances)))
    return float(np.mean(values)) if values else 0.0
