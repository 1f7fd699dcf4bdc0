"""Time and peak memory of each pipeline stage at several synthetic sizes (the README's sizing table).

    python benchmarks/sizing.py                      # 100k, 1M and 5M ratings
    python benchmarks/sizing.py --sizes 25000000 --cache /data/synthetic   # ml-25m's shape, kept
    python benchmarks/sizing.py --data-dir ~/ml-25m  # a real MovieLens copy instead

Results go to benchmarks/results/sizing.json (a data set measured again replaces its row).

Each size runs in its own process, stage by stage, the way the in-process executor runs the
assets: read the ratings (``raw_ratings``), ``interactions``, ``temporal_splits``, ``als_model``
without tuning (ALS 64 factors x 15 iterations, popularity and item-kNN baselines, EASE where the
catalogue allows, metrics with 200 bootstrap resamples), ``faiss_index`` (exact) and its recall
check, ``production_bundle``; then what the API holds (bundle load + engine, in a fresh process). Peak memory is the
process's resident set sampled every 20 ms during the stage, so it includes what earlier stages
left in memory, as a real run would. Tuning multiplies the ALS time by about the number of trials.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

# users and movies for a number of ratings, shaped like the MovieLens releases of that size
SHAPES = {
    100_000: (1_000, 3_000),  # ml-latest-small-like
    1_000_000: (6_000, 4_000),  # ml-1m-like
    5_000_000: (32_000, 20_000),
    10_000_000: (70_000, 10_700),  # ml-10m-like
    25_000_000: (162_000, 62_000),  # ml-25m-like
}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
SERVING_PROBE = (
    "import re, sys; from pathlib import Path; "
    "from recsys_serving.bundle import load_bundle; from recsys_serving.engine import Engine; "
    "Engine(load_bundle(Path(sys.argv[1]))); "
    "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
)


class PeakMemory:
    """Samples this process's RSS in a thread; ``stage()`` returns the peak since the last call."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak = interval, 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _run(self) -> None:
        while True:
            with self._lock:
                self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def stage(self) -> int:
        with self._lock:
            peak, self.peak = max(self.peak, self._rss()), self._rss()
        return peak


def synthetic_copy(n_ratings: int, cache: Path) -> Path:
    """Synthetic ratings of one size, shaped like the MovieLens release of that size; generated
    once per cache folder."""
    from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset

    target = cache / f"synthetic-{n_ratings}"
    if (target / "ratings.csv").is_file():
        return target
    users, movies = SHAPES.get(n_ratings, (max(n_ratings // 150, 100), max(n_ratings // 400, 500)))
    return write_dataset(SyntheticConfig(n_users=users, n_movies=movies, n_ratings=n_ratings), target)


def run_one(data_dir: Path, workdir: Path) -> dict:
    from recsys_assets.modeling.index import build_index, index_recall
    from recsys_assets.modeling.packaging import package_bundle
    from recsys_assets.modeling.recommenders import ALSParams
    from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
    from recsys_assets.processing.interactions import InteractionRules, build_interactions
    from recsys_assets.processing.splits import SplitRules, temporal_split
    from recsys_assets.sources.formats import read_movies, read_ratings

    memory = PeakMemory()
    stages: dict[str, dict] = {}

    def timed(name: str, work):
        memory.stage()
        started = time.perf_counter()
        value = work()
        stages[name] = {
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": memory.stage() // 2**20,
        }
        print(
            f"  {name:<18} {stages[name]['seconds']:>8.1f} s  {stages[name]['peak_rss_mb']:>7,} MB",
            flush=True,
        )
        return value

    movies_frame = read_movies(data_dir)
    ratings = timed("raw_ratings", lambda: read_ratings(data_dir))
    interactions = timed("interactions", lambda: build_interactions(ratings, InteractionRules())[0])
    splits = timed("temporal_splits", lambda: temporal_split(interactions, SplitRules()))
    plan = TrainingPlan(
        als=ALSParams(factors=64, iterations=15), tune=False, bootstrap_samples=200, model_kind="als"
    )
    model = timed("als_model", lambda: train_and_evaluate(splits, plan, info=lambda _: None))
    index = timed("faiss_index", lambda: build_index(model.item_factors, model.ids.item_ids))
    sample = model.user_factors[: min(1000, len(model.user_factors))]
    timed("index_recall", lambda: index_recall(index, sample, model.item_factors, model.ids.item_ids, k=10))
    bundle_dir = timed(
        "production_bundle",
        lambda: package_bundle(
            workdir / "bundles", model, movies_frame, ratings, splits, {"benchmark": True}, index
        ),
    )
    # What one API process holds: a fresh process, so the pipeline's data does not count.
    started = time.perf_counter()
    probe = subprocess.run(
        [sys.executable, "-c", SERVING_PROBE, str(bundle_dir)], capture_output=True, text=True, check=True
    )
    stages["serving_load"] = {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": int(probe.stdout.split()[-1]) // 1024,
    }
    print(
        f"  {'serving_load':<18} {stages['serving_load']['seconds']:>8.1f} s  "
        f"{stages['serving_load']['peak_rss_mb']:>7,} MB (own process, imports included)",
        flush=True,
    )
    return {
        "data": data_dir.name,
        "ratings": len(ratings),
        "users": ratings["user_id"].n_unique(),
        "movies": movies_frame.height,
        "interactions": sum(len(f) for f in splits.values()),
        "bundle_mb": round(sum(p.stat().st_size for p in bundle_dir.iterdir()) / 2**20, 1),
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--data-dir", type=Path, help="measure a MovieLens copy instead of --sizes")
    parser.add_argument(
        "--cache", type=Path, help="keep the synthetic data here (default: a temporary folder)"
    )
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child process's data
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="recsys-sizing-") as workdir:
            print("RESULT " + json.dumps(run_one(args.one, Path(workdir))), flush=True)
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="recsys-sizing-data-") as scratch:
        cache = args.cache or Path(scratch)
        sources = [args.data_dir] if args.data_dir else [synthetic_copy(n, cache) for n in args.sizes]
        for data_dir in sources:
            print(data_dir.name, flush=True)
            completed = subprocess.run(
                [sys.executable, __file__, "--one", str(data_dir)],
                capture_output=True,
                text=True,
                check=False,
            )
            for line in completed.stdout.splitlines():
                if line.startswith("RESULT "):
                    results.append(json.loads(line.removeprefix("RESULT ")))
                else:
                    print(line)
            if completed.returncode != 0:
                print(completed.stderr[-2000:], file=sys.stderr)
                sys.exit(completed.returncode)

    names = list(results[0]["stages"])
    print("\n| ratings | users | movies | bundle MB | " + " | ".join(names) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(names))
    for r in results:
        cells = [f"{r['stages'][n]['seconds']:.1f} s / {r['stages'][n]['peak_rss_mb']:,} MB" for n in names]
        print(
            f"| {r['ratings']:,} | {r['users']:,} | {r['movies']:,} | {r['bundle_mb']} | "
            + " | ".join(cells)
            + " |"
        )
    print(f"\n{os.cpu_count()} CPUs; time / peak resident memory of the process during the stage.")
    output = Path(__file__).parent / "results" / "sizing.json"
    previous = json.loads(output.read_text())["runs"] if output.is_file() else []
    # Data sets measured now replace their earlier rows; others keep theirs (each run is slow).
    measured = {r["data"] for r in results}
    previous = [{"data": f"synthetic-{r['ratings']}", **r} for r in previous]
    runs = sorted([r for r in previous if r["data"] not in measured] + [
        {**r, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count()} for r in results
    ], key=lambda r: r["ratings"])  # fmt: skip
    output.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
