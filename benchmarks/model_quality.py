"""Measure every method with the pipeline's own training protocol and print the table.

    python benchmarks/model_quality.py --data-dir ../shared/movielens/ml-latest-small
    python benchmarks/model_quality.py --synthetic 100000

Protocol (the defaults of the als_model asset): ratings >= 4 are positives (binary weight),
5-core on users and items, each user's last 2 positives are test and the 2 before validation;
ALS is tuned on validation (12 random points of the default grid, NDCG@10), then ALS and the
baselines are fitted on train+validation and ranked over the whole catalogue for every warm test
user, already-seen items excluded; 95% intervals are 1,000 paired bootstrap resamples of users.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsys_assets.defs.modeling import ALSModelConfig
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.processing.splits import SplitRules, temporal_split
from recsys_assets.sources.formats import read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path, help="a MovieLens directory")
    source.add_argument("--synthetic", type=int, metavar="RATINGS", help="synthetic data of this size")
    args = parser.parse_args()

    if args.data_dir:
        ratings, label = read_ratings(args.data_dir), str(args.data_dir)
    else:
        cfg = SyntheticConfig(n_ratings=args.synthetic)
        _, raw = generate(cfg)
        ratings, label = (
            raw.rename({"userId": "user_id", "movieId": "movie_id"}),
            f"synthetic ({cfg})",
        )
    interactions, stats = build_interactions(ratings, InteractionRules())
    splits = temporal_split(interactions, SplitRules(strategy="leave_last_n", n=2))
    from recsys_assets.modeling.training import train_and_evaluate

    started = time.perf_counter()
    model = train_and_evaluate(splits, ALSModelConfig().plan(), info=lambda m: print("  " + m))
    print(f"\ndata: {label}\ninteractions: {stats}\nchosen ALS: {model.params.flat()}")
    print(f"split: {model.split_stats}\ntotal {time.perf_counter() - started:.1f}s\n")
    print(model.evaluation.markdown())


if __name__ == "__main__":
    main()
