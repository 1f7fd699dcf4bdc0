"""How well new movies are ranked from their content: an item-cold split, printed and written to
benchmarks/results/cold_items.json.

    python benchmarks/cold_items.py                      # synthetic (20k users, 2M ratings) + ml-latest-small
    python benchmarks/cold_items.py --data-dir DIR ...   # any MovieLens directory, several allowed

Protocol: the movies first rated after a cutoff (the last ``--cold-share`` of rated movies by
first rating: 10% and 20% by default) are the new releases. Everything before the cutoff is training data:
interactions and ALS exactly as the pipeline builds them (its default rules and parameters), and
content vectors from genres, year and only the tags applied before the cutoff. Each user the model
knows who later rated a new movie positively (>= the positive threshold) is evaluated: all new
movies are ranked for them and NDCG@10 / Recall@10 count the ones they rated positively (so only
new movies are candidates, and only new movies can be hits), with 95% bootstrap intervals over
users. Methods: the bundle's content path (ridge map from content to ALS factors, then the user's
factors), the same with content-neighbour averaging instead of ridge, the content path without
tags, and the baselines random, newest first (release year), most popular genre (the genres most
rated in training) and the user's favourite genres (the share of the user's training positives
in each of the movie's genres).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from recsys_assets.modeling.content import ContentModelRules, estimate_factors, neighbour_weights
from recsys_assets.modeling.evaluation import bootstrap_ci, hit_matrix, per_user_metrics
from recsys_assets.modeling.matrices import IdMap, to_csr
from recsys_assets.modeling.recommenders import ALS, ALSParams
from recsys_assets.processing.content import ContentRules, content_vectors, genre_block
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.sources.formats import read_movies, read_ratings, read_tags
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
from recsys_serving.models import best_rows_each

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "movielens" / "ml-latest-small"
RESULTS = ROOT / "benchmarks" / "results" / "cold_items.json"
K = 10
METRICS = (f"ndcg@{K}", f"recall@{K}", f"hit_rate@{K}")


def item_cold_split(ratings: pl.DataFrame, cold_share: float) -> tuple[int, np.ndarray]:
    """The cutoff time and the new movies: those whose first rating is at or after it."""
    first = ratings.group_by("movie_id").agg(pl.col("timestamp").min().alias("first")).sort("first")
    cutoff = int(first["first"][int(len(first) * (1 - cold_share))])
    cold = first.filter(pl.col("first") >= cutoff)["movie_id"].to_numpy().astype(np.int64)
    return cutoff, np.sort(cold)


def evaluate(directory: Path, cold_share: float, n_boot: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    ratings, movies, tags = read_ratings(directory), read_movies(directory), read_tags(directory)
    cutoff, cold_ids = item_cold_split(ratings, cold_share)
    rules = InteractionRules()
    training = ratings.filter(pl.col("timestamp") < cutoff)
    interactions, _ = build_interactions(training, rules)
    ids = IdMap.from_frame(interactions)
    als = ALS(ALSParams())
    als.fit(to_csr(interactions, ids))

    later = ratings.filter(
        (pl.col("timestamp") >= cutoff)
        & pl.col("movie_id").is_in(cold_ids.tolist())
        & (pl.col("rating") >= rules.positive_threshold)
        & pl.col("user_id").is_in(ids.user_ids.tolist())
    )
    users = np.unique(later["user_id"].to_numpy()).astype(np.int64)
    relevant = to_csr(later, IdMap(users, cold_ids), value=None)
    relevant.data[:] = 1.0
    user_factors = als.user_factors[ids.user_index(users)]

    def content_scores(content_rules: ContentRules, mapping: str) -> np.ndarray:
        vectors = content_vectors(movies, tags.filter(pl.col("timestamp") < cutoff), None, content_rules)
        warm = vectors.vectors[vectors.rows_of(ids.item_ids)]
        cold = vectors.vectors[vectors.rows_of(cold_ids)]
        if mapping == "ridge":
            factors = estimate_factors(warm, als.item_factors, cold, ContentModelRules().ridge_l2)
        else:
            factors = neighbour_weights(cold, warm, ContentModelRules().neighbours) @ als.item_factors
        return user_factors @ np.asarray(factors, dtype=np.float32).T

    rng = np.random.default_rng(seed)
    ordered = movies.sort("movie_id")
    catalogue = ordered["movie_id"].to_numpy().astype(np.int64)
    cold_rows = np.searchsorted(catalogue, cold_ids)
    hot, _ = genre_block(ordered["genres"].to_list())
    positives = interactions.select("user_id", "movie_id")
    genre_counts = np.asarray(hot[np.searchsorted(catalogue, positives["movie_id"].to_numpy())].sum(axis=0))
    genre_share = genre_counts / max(genre_counts.sum(), 1)
    user_positive = to_csr(
        positives.filter(pl.col("user_id").is_in(users.tolist())), IdMap(users, catalogue), None
    )
    user_genres = np.asarray(user_positive @ hot)
    user_genres /= np.maximum(user_genres.sum(axis=1, keepdims=True), 1)
    years = ordered["year"].cast(pl.Float64).fill_null(0).to_numpy()[cold_rows]
    tie = rng.random(len(cold_ids)) * 1e-6  # the same random tie-break for every baseline

    scores = {
        "content (ridge to ALS factors)": content_scores(ContentRules(), "ridge"),
        "content (neighbour-averaged factors)": content_scores(ContentRules(), "neighbours"),
        "content without tags (ridge)": content_scores(ContentRules(tag_weight=0.0), "ridge"),
        "user's favourite genres": user_genres @ hot[cold_rows].T + tie,
        "most popular genre": np.broadcast_to(
            (hot[cold_rows] * genre_share).max(axis=1) + tie, (len(users), len(cold_ids))
        ),
        "newest first": np.broadcast_to(years + tie, (len(users), len(cold_ids))),
        "random": rng.random((len(users), len(cold_ids))),
    }
    n_relevant = np.diff(relevant.indptr)
    results, pair_ranks = {}, {}
    for method, score in scores.items():
        top = best_rows_each(np.ascontiguousarray(score, dtype=np.float32), K)
        per_user = per_user_metrics(hit_matrix(top, relevant), n_relevant, ks=(K,))
        chosen = {name: per_user[name] for name in METRICS}
        intervals = bootstrap_ci(chosen, n_boot=n_boot, seed=seed)
        results[method] = {
            name: {"mean": float(values.mean()), "ci95": list(intervals.get(name, (float("nan"),) * 2))}
            for name, values in chosen.items()
        }
        # Each held-out (user, new movie) pair: the movie's rank among all new movies for that user.
        order = np.argsort(-np.asarray(score, dtype=np.float32), axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(len(cold_ids))[None, :], axis=1)
        held_user, held_item = relevant.nonzero()
        pair_ranks[method] = ranks[held_user, held_item]
    ridge = pair_ranks["content (ridge to ALS factors)"]
    held_user, held_item = relevant.nonzero()
    hit_items = np.unique(held_item[ridge < K])
    return {
        "dataset": str(directory),
        "cutoff": datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds"),
        "new_movies": len(cold_ids),
        "new_movies_rated_positively": int(np.unique(held_item).size),
        "evaluated_users": len(users),
        "held_out_pairs": int(relevant.nnz),
        "training_ratings": len(training),
        "tags_before_cutoff": int((tags["timestamp"] < cutoff).sum()),
        "model_items": len(ids.item_ids),
        "methods": results,
        "useful_rank": {
            "pairs_in_top_10": float((ridge < K).mean()),
            "pairs_in_top_10_random_expectation": min(K / len(cold_ids), 1.0),
            "median_rank_percentile": float(np.median(ridge / max(len(cold_ids) - 1, 1)) * 100),
            "new_movies_ranked_in_someones_top_10_when_they_rated_it": int(hit_items.size),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(result: dict) -> str:
    lines = [f"| method | NDCG@{K} (95% CI) | Recall@{K} (95% CI) |", "|---|---|---|"]
    for method, metrics in result["methods"].items():
        cells = [
            f"{metrics[name]['mean']:.4f} ({metrics[name]['ci95'][0]:.4f}-{metrics[name]['ci95'][1]:.4f})"
            for name in (f"ndcg@{K}", f"recall@{K}")
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, action="append", default=[])
    parser.add_argument("--cold-share", type=float, action="append", default=[])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recsys-cold-items"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    directories = list(args.data_dir)
    if not directories:
        synthetic = SyntheticConfig(n_users=20_000, n_movies=8_000, n_ratings=2_000_000)
        directories.append(write_dataset(synthetic, args.workdir / "synthetic-20k"))
        if os.environ.get("RECSYS_DATA_DIR"):
            directories.append(Path(os.environ["RECSYS_DATA_DIR"]))
        elif (SHARED / "ratings.csv").is_file():
            directories.append(SHARED)
    results = []
    for directory in directories:
        for share in args.cold_share or [0.1, 0.2]:
            print(f"==> {directory}, the last {share:.0%} of movies new")
            result = {"cold_share": share, **evaluate(directory, share, args.bootstrap)}
            results.append(result)
            print(
                f"    cutoff {result['cutoff']}: {result['new_movies']} new movies, {result['evaluated_users']} "
                f"users, {result['held_out_pairs']} held-out positives, {result['seconds']}s"
            )
            print(table(result))
            useful = result["useful_rank"]
            print(
                f"    content path: {useful['pairs_in_top_10']:.1%} of held-out pairs in the user's top 10 of "
                f"{result['new_movies']} new movies (random: {useful['pairs_in_top_10_random_expectation']:.1%}); "
                f"median rank at the {useful['median_rank_percentile']:.0f}th percentile; "
                f"{useful['new_movies_ranked_in_someones_top_10_when_they_rated_it']} of "
                f"{result['new_movies_rated_positively']} new movies in the top 10 of someone who rated them"
            )
    payload = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "protocol": __doc__.split("Protocol: ", 1)[1].strip(),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
