"""Model quality, measured two ways, printed and written to benchmarks/results/model_quality.json.

    python benchmarks/model_quality.py                       # ml-latest-small (shared copy) + synthetic
    python benchmarks/model_quality.py --data-dir DIR ...    # any MovieLens directory, several allowed
    RECSYS_DATA_DIR=DIR python benchmarks/model_quality.py   # the same, from the environment

1. The pipeline's own protocol (the als_model asset's defaults): ratings >= 4 are positives, a
   5-core on users and items, each user's last 2 positives are test and the 2 before validation;
   item-kNN, EASE and ALS are tuned on validation within the default time budget, the best kind
   is chosen, every method is refit on train+validation and ranked over the whole catalogue for
   every warm test user (seen items excluded), with 95% paired bootstrap intervals.
2. A held-out check the pipeline never sees (the protocol of issue 11): each user with at least 5
   positives has the last 20% of their positives held out; everything they rated before their first
   held-out movie is training data. The pipeline gets only the training ratings, builds and
   packages its bundle with its defaults, and the serving engine answers every held-out user's
   top 10 exactly as the API would (popular fallback for users the bundle does not know). Beside
   it, on the same split: popularity and a plain EASE (lambda 100 on binary positives of all the
   training ratings, no k-core). The ratio served / EASE is the figure to watch.
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
import scipy.sparse as sp

from recsys_assets.defs.modeling import ALSModelConfig
from recsys_assets.defs.preparation import InteractionsConfig, SplitConfig
from recsys_assets.modeling.comparison import BundleScorer
from recsys_assets.modeling.evaluation import bootstrap_ci, hit_matrix, per_user_metrics
from recsys_assets.modeling.matrices import IdMap, to_csr
from recsys_assets.modeling.packaging import package_bundle
from recsys_assets.modeling.recommenders import EASE
from recsys_assets.modeling.training import train_and_evaluate
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.processing.splits import SplitRules, temporal_split
from recsys_assets.sources.formats import read_movies, read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
from recsys_serving.bundle import load_bundle
from recsys_serving.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "movielens" / "ml-latest-small"
RESULTS = ROOT / "benchmarks" / "results" / "model_quality.json"
K = 10


def pipeline_protocol(ratings: pl.DataFrame, plan) -> tuple[object, dict, float]:
    interactions, stats = build_interactions(ratings, InteractionRules(**InteractionsConfig().model_dump()))
    splits = temporal_split(interactions, SplitRules(**SplitConfig().model_dump()))
    started = time.perf_counter()
    model = train_and_evaluate(splits, plan, info=lambda m: print("    " + m))
    return model, splits, time.perf_counter() - started


def held_out_split(ratings: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training ratings, held-out positives): each user's last 20% of positives, users with >= 5."""
    positives = (
        ratings.filter(pl.col("rating") >= 4)
        .sort(["user_id", "timestamp", "movie_id"])
        .filter(pl.len().over("user_id") >= 5)
        .with_columns(rank=pl.int_range(pl.len()).over("user_id"), n=pl.len().over("user_id"))
    )
    held = positives.filter(pl.col("rank") >= (pl.col("n") * 0.8).ceil().cast(pl.Int64))
    first = held.group_by("user_id").agg(first=pl.col("timestamp").min())
    training = (
        ratings.join(first, on="user_id", how="left")
        .filter(pl.col("first").is_null() | (pl.col("timestamp") < pl.col("first")))
        .drop("first")
    )
    return training, held.select("user_id", "movie_id")


def score_lists(lists: np.ndarray, held: sp.csr_matrix, n_boot: int = 1000) -> dict:
    """NDCG@10 and Recall@10 with 95% intervals; lists hold catalogue columns, -1 for none."""
    values = per_user_metrics(hit_matrix(lists, held), held.getnnz(axis=1), (K,))
    intervals = bootstrap_ci(values, n_boot)
    return {
        name: {"value": float(v.mean()), "ci": list(intervals[name])}
        for name, v in values.items()
        if name in (f"ndcg@{K}", f"recall@{K}")
    }


def held_out_check(ratings: pl.DataFrame, movies: pl.DataFrame, plan, workdir: Path) -> dict:
    training, held = held_out_split(ratings)
    model, splits, seconds = pipeline_protocol(training, plan)
    bundle = load_bundle(
        package_bundle(workdir, model, movies, training, splits, {"dataset": {"source": "held-out"}})
    )
    engine = Engine(bundle)
    users = np.sort(held["user_id"].unique().to_numpy()).astype(np.int64)
    catalogue = np.sort(ratings["movie_id"].unique().to_numpy()).astype(np.int64)
    relevant = to_csr(held, IdMap(users, catalogue), value=None)
    seen = to_csr(training, IdMap(users, catalogue), value=None)
    none = np.empty(0, dtype=np.int64)

    served = np.full((len(users), K), -1, dtype=np.int64)
    fallbacks = 0
    for i, user in enumerate(users.tolist()):
        row = engine.user_row(user)
        if row is None:
            fallbacks += 1
            rated = engine.catalogue_rows(catalogue[seen[i].indices].tolist())
            scored = engine.popular(K, [], rated)
        else:
            scored = engine.recommend_user(row, K, none, [], False)
        served[i, : len(scored.rows)] = np.searchsorted(catalogue, engine.item_ids[scored.rows])

    # The same bundle with each user's input cut to what the model was fitted on (the test split's
    # latest interactions left out, as bundles held them before): what the whole history is worth.
    known_rows = np.array(
        [engine.user_row(u) if engine.user_row(u) is not None else -1 for u in users.tolist()]
    )
    scorer = BundleScorer("fitted_input_only", bundle)
    fitted = bundle.fitted_pairs()
    fitted_only = served.copy()
    for start in range(0, len(users), 512):
        block = np.flatnonzero(known_rows[start : start + 512] >= 0) + start
        if not block.size:
            continue
        scores = scorer.scores(known_rows[block], fitted)
        scores[bundle.seen[known_rows[block]].nonzero()] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        fitted_only[block] = np.searchsorted(catalogue, bundle.item_ids[top])

    # Baselines on the same split, over the whole catalogue, seen movies excluded.
    positives = training.filter(pl.col("rating") >= 4)
    x = to_csr(positives, IdMap(users, catalogue), value=None)
    everyone = IdMap.from_frame(positives)
    ease = EASE(100.0, max_items=len(catalogue) + 1)
    full = to_csr(positives, IdMap(everyone.user_ids, catalogue), value=None)
    ease.fit(full)
    rows = np.searchsorted(everyone.user_ids, users)
    known = everyone.user_ids[np.minimum(rows, len(everyone.user_ids) - 1)] == users
    counts = np.asarray(full.sum(axis=0)).ravel()
    baseline_lists = {}
    for name in ("popularity", "ease"):
        lists = np.full((len(users), K), -1, dtype=np.int64)
        for start in range(0, len(users), 512):
            block = slice(start, start + 512)
            if name == "ease":
                scores = np.asarray((x[block] > 0).astype(np.float32) @ ease.weights)
                scores[~known[block]] = counts
            else:
                scores = np.broadcast_to(counts, (len(users[block]), len(counts))).astype(np.float32)
            r, c = seen[block].nonzero()
            scores[r, c] = -np.inf
            top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
            lists[block] = top
        baseline_lists[name] = lists
    result = {
        "held_out_users": len(users),
        "held_out_interactions": int(relevant.nnz),
        "served_kind": model.kind,
        "served_parameters": model.kind_params,
        "fallback_users": fallbacks,
        "pipeline_seconds": round(seconds, 1),
        "served": score_lists(served, relevant),
        "served_without_latest_history": score_lists(fitted_only, relevant),
        **{name: score_lists(lists, relevant) for name, lists in baseline_lists.items()},
    }
    result["served_over_ease_ndcg"] = result["served"][f"ndcg@{K}"]["value"] / max(
        result["ease"][f"ndcg@{K}"]["value"], 1e-12
    )
    return result


def run(label: str, directory: Path, plan, workdir: Path) -> dict:
    ratings, movies = read_ratings(directory), read_movies(directory)
    print(f"\n== {label}: {len(ratings):,} ratings")
    print("  pipeline protocol")
    model, _, seconds = pipeline_protocol(ratings, plan)
    print(model.evaluation.markdown())
    search = model.search
    protocol = {
        "served_kind": model.kind,
        "selection": model.selection,
        "served_parameters": model.kind_params,
        "als_parameters": model.params.flat(),
        "seconds": round(seconds, 1),
        "tuning": None
        if search is None
        else {
            "budget_seconds": search.budget_seconds,
            "seconds": round(search.seconds, 1),
            "trials": len(search.trials),
        },
        "test_users": model.evaluation.users,
        "methods": {
            r.method: {
                m: {"value": r.metrics[m], "ci": list(r.intervals.get(m, ()))}
                for m in ("ndcg@10", "recall@10")
            }
            for r in model.evaluation.results
        },
    }
    print(f"  served: {model.kind} {model.kind_params} ({model.selection['reason']}); {seconds:.0f}s")
    print("  held-out check")
    check = held_out_check(ratings, movies, plan, workdir / label)
    for name in ("served", "served_without_latest_history", "popularity", "ease"):
        ndcg = check[name][f"ndcg@{K}"]
        print(f"    {name:30s} ndcg@10 {ndcg['value']:.4f} [{ndcg['ci'][0]:.4f}, {ndcg['ci'][1]:.4f}]")
    print(f"    served ({check['served_kind']}) / EASE: {check['served_over_ease_ndcg']:.3f}")
    return {"label": label, "ratings": len(ratings), "protocol": protocol, "held_out": check}


def cell(entry: dict) -> str:
    low, high = entry["ci"] if entry.get("ci") else (None, None)
    return f"{entry['value']:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")


def markdown(report: dict) -> str:
    """The README's tables, from the results file."""
    lines = []
    for run in report["runs"]:
        protocol, check = run["protocol"], run["held_out"]
        tuning = protocol["tuning"] or {}
        lines += [
            f"**{run['label']}** ({run['ratings']:,} ratings). Pipeline protocol, {protocol['test_users']:,} test "
            f"users; served: **{protocol['served_kind']}** ({protocol['selection']['reason']}); search "
            f"{tuning.get('trials', 0)} trials in {tuning.get('seconds', 0):.0f} s of a "
            f"{tuning.get('budget_seconds', 0):.0f} s budget:",
            "",
            "| method | NDCG@10 | Recall@10 |",
            "|---|---|---|",
        ]
        for method, metrics in protocol["methods"].items():
            name = f"**{method}** (served)" if method == protocol["served_kind"] else method
            lines.append(f"| {name} | {cell(metrics['ndcg@10'])} | {cell(metrics['recall@10'])} |")
        lines += [
            "",
            f"Held-out check ({check['held_out_users']:,} users, {check['held_out_interactions']:,} held-out "
            f"positives; the pipeline served **{check['served_kind']}**, {check['fallback_users']} users fell back "
            f"to popular):",
            "",
            "| | NDCG@10 | Recall@10 |",
            "|---|---|---|",
        ]
        for name in ("served", "served_without_latest_history", "ease", "popularity"):
            label = {"ease": "EASE λ 100 (all training positives)"}.get(name, name.replace("_", " "))
            lines.append(f"| {label} | {cell(check[name]['ndcg@10'])} | {cell(check[name]['recall@10'])} |")
        lines += ["", f"Served / EASE NDCG@10: **{check['served_over_ease_ndcg']:.3f}**.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, action="append", default=[], help="a MovieLens directory")
    parser.add_argument("--synthetic", type=int, default=100_000, help="synthetic ratings (0: none)")
    parser.add_argument("--budget", type=float, help="tuning budget in seconds (default: the asset's)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recsys-model-quality"))
    args = parser.parse_args()

    config = ALSModelConfig() if args.budget is None else ALSModelConfig(tuning_budget_seconds=args.budget)
    plan = config.plan()
    directories = list(args.data_dir)
    if os.environ.get("RECSYS_DATA_DIR"):
        directories.append(Path(os.environ["RECSYS_DATA_DIR"]))
    if not directories and SHARED.is_dir():
        directories.append(SHARED)
    runs = [run(d.name, d, plan, args.workdir) for d in directories]
    if args.synthetic:
        cfg = SyntheticConfig(n_ratings=args.synthetic)
        directory = write_dataset(cfg, args.workdir / "synthetic-data")
        runs.append(run(f"synthetic-{args.synthetic}", directory, plan, args.workdir))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "tuning_budget_seconds": plan.space.budget_seconds,
        "runs": runs,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}\n\n{markdown(report)}")


if __name__ == "__main__":
    main()
