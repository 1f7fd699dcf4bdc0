"""The whole default asset graph at one size, as a user runs it: time per step and peak memory.

    python benchmarks/whole_graph.py                          # 25M synthetic ratings (ml-25m shape)
    python benchmarks/whole_graph.py --ratings 1000000        # another synthetic size
    python benchmarks/whole_graph.py --data-dir ~/ml-25m --dataset ml-25m   # a real copy

Runs ``dagster asset materialize -m recsys_assets.definitions --select '*'`` from the repository
root in a fresh DAGSTER_HOME, data root and MLflow store (the default configuration, nothing
tuned for the benchmark), then reads each step's time from the run's event log and its peak
resident memory from samples of the run process's RSS (every 0.2 s; the run's overall peak is
Linux ``ru_maxrss``), the served model's test metrics from the ``als_model`` materialisation, and what one API process needs for the promoted
bundle (start to first answer, resident memory). The synthetic data is generated once into
``--workdir`` and reused.

With ``--reference-budget SECONDS`` the same split (the pure functions with the pipeline's
defaults) is also trained the slow, thorough way: that search budget and a fresh final fit of
the full iterations (no warm start), evaluated on the same test users, so the fast default path's
NDCG@10 is judged against it. Results go to benchmarks/results/whole_graph.json (one row per data
set; a data set measured again replaces its row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from sizing import SERVING_PROBE, synthetic_copy  # noqa: E402

OUTPUT = Path(__file__).parent / "results" / "whole_graph.json"


class RssSamples:
    """A process's resident memory sampled in a thread: [(time.time(), bytes)]."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.samples: list[tuple[float, int]] = []
        self._pid, self._interval, self._page = pid, interval, os.sysconf("SC_PAGE_SIZE")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                with open(f"/proc/{self._pid}/statm") as handle:
                    self.samples.append((time.time(), int(handle.read().split()[1]) * self._page))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(self._interval)

    def peak_mb(self, start: float, end: float) -> int:
        inside = [rss for at, rss in self.samples if start <= at <= end]
        return max(inside, default=0) // 2**20


def step_times(home: Path) -> tuple[dict[str, tuple[float, float]], str]:
    """Each step's (start, end) wall-clock times from the run's event log, and the run id."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        started: dict[str, float] = {}
        spans: dict[str, tuple[float, float]] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                started[event.step_key] = entry.timestamp
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                spans[event.step_key] = (started[event.step_key], entry.timestamp)
        return spans, run.run_id


def model_figures(home: Path) -> dict:
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("als_model"))
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    wanted = (
        "served_kind",
        "evaluation_users",
        "tuning_seconds",
        "tuning_trials",
        "fit_seconds",
        "served_intervals",
        "served_parameters",
    )
    figures = {k: metadata[k].value for k in wanted if k in metadata}
    figures.update(
        {k: round(v.value, 5) for k, v in metadata.items() if k.startswith("served_") and k.endswith("@10")}
    )
    return figures


def serving_figures(bundle_root: Path) -> dict:
    from recsys_serving.promotion import promoted_path

    bundle = promoted_path(bundle_root)
    if bundle is None:
        sys.exit(f"no bundle was promoted under {bundle_root}")
    started = time.perf_counter()
    probe = subprocess.run(
        [sys.executable, "-c", SERVING_PROBE, str(bundle)], capture_output=True, text=True, check=True
    )
    return {
        "bundle": bundle.name,
        "bundle_mb": round(sum(p.stat().st_size for p in bundle.iterdir()) / 2**20, 1),
        "api_load_seconds": round(time.perf_counter() - started, 2),
        "api_peak_rss_mb": int(probe.stdout.split()[-1]) // 1024,
    }


def reference_model(data_dir: Path, budget: float) -> dict:
    """The thorough path on the pipeline's split: a long search, a fresh full refit."""
    from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
    from recsys_assets.modeling.tuning import SearchSpace
    from recsys_assets.processing.interactions import InteractionRules, build_interactions
    from recsys_assets.processing.splits import SplitRules, temporal_split
    from recsys_assets.sources.formats import read_ratings

    splits = temporal_split(build_interactions(read_ratings(data_dir), InteractionRules())[0], SplitRules())
    started = time.perf_counter()
    plan = TrainingPlan(space=SearchSpace(budget_seconds=budget), warm_refit_iterations=None)
    model = train_and_evaluate(splits, plan, info=lambda line: print(f"  reference: {line}", flush=True))
    served = model.evaluation.get(model.kind)
    return {
        "budget_seconds": budget,
        "seconds": round(time.perf_counter() - started, 1),
        "served_kind": model.kind,
        "served_params": model.kind_params,
        "trials": len(model.trials),
        "evaluation_users": model.evaluation.users,
        "served_ndcg@10": round(served.metrics["ndcg@10"], 5),
        "served_intervals": {"ndcg@10": [round(x, 5) for x in served.intervals["ndcg@10"]]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ratings", type=int, default=25_000_000, help="synthetic size (ignored with --data-dir)"
    )
    parser.add_argument("--data-dir", type=Path, help="a MovieLens copy instead of synthetic data")
    parser.add_argument("--dataset", default="ml-25m", help="RECSYS_DATASET for --data-dir (its layout)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-whole-graph")
    parser.add_argument("--reference-budget", type=float, help="also train the thorough reference (seconds)")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    generated = None
    if args.data_dir:
        data_dir, name = args.data_dir.resolve(), args.dataset
    else:
        cached = (args.workdir / f"synthetic-{args.ratings}" / "ratings.csv").is_file()
        started = time.perf_counter()
        data_dir = synthetic_copy(args.ratings, args.workdir)
        generated = None if cached else time.perf_counter() - started
        name = f"synthetic-{args.ratings}"
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    (run_dir / "home").mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(run_dir / "home"),
        "RECSYS_DATASET": args.dataset,
        "RECSYS_DATA_DIR": str(data_dir),
        "RECSYS_DATA_ROOT": str(run_dir / "data"),
        "RECSYS_MLFLOW_TRACKING_URI": f"sqlite:///{run_dir / 'mlflow.db'}",
    }
    env.pop("RECSYS_BUNDLE_ROOT", None)
    print(f"{name}: materialising every asset (log: {run_dir / 'materialize.log'})", flush=True)
    started = time.perf_counter()
    with open(run_dir / "materialize.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "recsys_assets.definitions",
             "--select", "*"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        memory = RssSamples(process.pid)
        returncode = process.wait()
    total = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    if returncode != 0:
        sys.exit(f"the run failed (exit {returncode}); see {run_dir / 'materialize.log'}")

    spans, run_id = step_times(run_dir / "home")
    steps = {
        step: {"seconds": round(end - start, 1), "peak_rss_mb": memory.peak_mb(start, end)}
        for step, (start, end) in spans.items()
    }
    row = {
        "data": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "generate_seconds": None if generated is None else round(generated, 1),
        "whole_graph_seconds": round(total, 1),
        "peak_rss_mb": peak_mb,
        "steps": steps,
        "model": model_figures(run_dir / "home"),
        "serving": serving_figures(run_dir / "data" / "bundles"),
        "run_id": run_id,
    }
    previous = json.loads(OUTPUT.read_text())["runs"] if OUTPUT.is_file() else []
    if args.reference_budget:
        print(
            f"reference: the same split with a {args.reference_budget:.0f} s search and a fresh refit",
            flush=True,
        )
        row["reference"] = {
            **reference_model(data_dir, args.reference_budget),
            "measured_at": row["measured_at"],
        }
    else:
        # The reference depends on the data and the pure functions' defaults, not on the graph's
        # speed: a re-run of the graph keeps the one measured before on the same data.
        earlier = next((r for r in previous if r["data"] == name and "reference" in r), None)
        if earlier is not None:
            row["reference"] = {"measured_at": earlier["measured_at"], **earlier["reference"]}
    for step, figures in sorted(steps.items(), key=lambda item: -item[1]["seconds"])[:12]:
        print(f"  {step:<55} {figures['seconds']:>8.1f} s {figures['peak_rss_mb']:>8,} MB")
    print(
        f"whole graph {total / 60:.1f} min, peak RSS {peak_mb:,} MB; model {row['model']}; serving {row['serving']}"
    )
    runs = [r for r in previous if r["data"] != name] + [row]
    OUTPUT.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"written to {OUTPUT}")


if __name__ == "__main__":
    main()
