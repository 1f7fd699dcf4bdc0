"""A cold start's steps timed in-process, this serving code against another checkout's.

    python benchmarks/cold_start_steps.py --bundle-root RUN/data/bundles --baseline-code ../old
    python benchmarks/cold_start_steps.py --baseline-code ../old   # a bundle of ml-latest-small

The HTTP benchmark (serve_bench.py) measures whole requests against /health, and on this shared
2-CPU machine its ratios move by several points between runs: a change of 30 us inside a
cold start hides in that spread. Here each step of ``POST /recommendations`` (``Engine``'s
``liked_query``: the fold-in and the filter; ``rank_liked``: the search of the model's items;
``finish_liked``: the cold slots and the merge, then the same with ``explain=true``; the three
steps in a row; and ``recommend_liked``, what the route calls, without and with explanations:
for ALS behind an exact scan one compiled call, ``recsys_serving.new_users``) runs on the
same requests in a tight loop, timed by the thread's CPU clock (time other processes take from
the machine is not counted), best of several repeats. Each checkout runs in its own process
(``PYTHONPATH``), alternately, so drift of the machine falls on both. Liked movies are drawn
uniformly (obscure ones: the search's hard case) and by popularity, as in serve_bench.py.
Results go to benchmarks/results/cold_start_steps[_<label>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

STEPS = (
    "fold-in and filter",
    "search",
    "cold slots and merge",
    "explanations, cold slots and merge",
    "whole, step by step",
    "whole",
    "whole with explanations",
)


def measure(bundle_root: Path, cold_slots: int, calls: int, repeats: int) -> dict:
    """Per draw and step, the best and median over ``repeats`` of the mean CPU time per call (us)."""
    from recsys_serving.bundle import load_bundle
    from recsys_serving.engine import Engine, compile_kernels, limit_threads
    from recsys_serving.promotion import promoted_path

    limit_threads()
    compile_kernels()
    bundle = load_bundle(promoted_path(bundle_root))
    engine = Engine(bundle, cold_slots=cold_slots)
    rng = np.random.default_rng(0)
    movies = rng.choice(bundle.item_ids, size=min(500, len(bundle.item_ids)), replace=False)
    ratings_per_movie = np.bincount(bundle.seen.indices, minlength=len(bundle.item_ids))
    draws = {
        "uniform": [rng.choice(movies, 5) for _ in range(300)],
        "by popularity": [
            rng.choice(bundle.item_ids, 5, replace=False, p=ratings_per_movie / ratings_per_movie.sum())
            for _ in range(300)
        ],
    }
    out: dict = {}
    for draw, liked_sets in draws.items():
        known = [
            np.array(sorted({engine.catalogue_row(int(m)) for m in liked}), dtype=np.int64)
            for liked in liked_sets
        ]
        out[draw] = time_steps(engine, known, calls, repeats)
    return {
        "items": int(engine.n_items),
        "cold_items": 0 if engine.cold is None else int(engine.cold.n_cold),
        "steps": out,
    }


def time_steps(engine: Any, known: list[np.ndarray], calls: int, repeats: int) -> dict:
    queries = [engine.liked_query(rows, 10, []) for rows in known]
    ranked = [engine.rank_liked(q) for q in queries]

    def step_by_step(i: int) -> Any:
        query = engine.liked_query(known[i], 10, [])
        return engine.finish_liked(query, engine.rank_liked(query), False)

    steps = {
        STEPS[0]: lambda i: engine.liked_query(known[i], 10, []),
        STEPS[1]: lambda i: engine.rank_liked(queries[i]),
        STEPS[2]: lambda i: engine.finish_liked(queries[i], ranked[i], False),
        STEPS[3]: lambda i: engine.finish_liked(queries[i], ranked[i], True),
        STEPS[4]: step_by_step,
        STEPS[5]: lambda i: engine.recommend_liked(known[i], 10, [], False),
        STEPS[6]: lambda i: engine.recommend_liked(known[i], 10, [], True),
    }
    times: dict[str, list[float]] = {step: [] for step in steps}
    for _ in range(repeats):
        for step, run in steps.items():  # interleaved, so drift falls on every step alike
            started = time.thread_time()
            for i in range(calls):
                run(i % len(known))
            times[step].append((time.thread_time() - started) / calls * 1e6)
    return {step: {"best_us": min(t), "median_us": float(np.median(t))} for step, t in times.items()}


def run_in(code: Path, bundle_root: Path, cold_slots: int, calls: int, repeats: int) -> dict:
    """:func:`measure` in a fresh process on the serving code of checkout ``code``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run(
            [sys.executable, __file__, "--measure", result.name, "--bundle-root", str(bundle_root),
             "--cold-slots", str(cold_slots), "--calls", str(calls), "--repeats", str(repeats)],
            env={**os.environ, "PYTHONPATH": str(code)}, cwd=code, check=True,
        )  # fmt: skip
        measured: dict = json.loads(Path(result.name).read_text())
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle-root", type=Path, default=None, help="serve the bundle promoted here")
    parser.add_argument("--baseline-code", type=Path, default=None, help="a checkout to compare with")
    parser.add_argument(
        "--cold-slots", type=int, default=1, help="cold slots per list (the API's default: 1)"
    )
    parser.add_argument("--calls", type=int, default=400, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="processes per checkout, alternating")
    parser.add_argument("--label", default="")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        args.measure.write_text(
            json.dumps(measure(args.bundle_root, args.cold_slots, args.calls, args.repeats))
        )
        return

    from serve_bench import DEFAULT_DATA, _revision, build_bundle

    with tempfile.TemporaryDirectory() as scratch:
        bundle_root = args.bundle_root
        if bundle_root is None:
            build_bundle(Path(scratch), DEFAULT_DATA if DEFAULT_DATA.is_dir() else None, 100_000)
            bundle_root = Path(scratch) / "bundles"
        codes = {"this": ROOT, **({"baseline": args.baseline_code.resolve()} if args.baseline_code else {})}
        runs: dict[str, list[dict]] = {name: [] for name in codes}
        for _ in range(args.rounds):
            for name, code in codes.items():
                runs[name].append(
                    run_in(code, bundle_root.resolve(), args.cold_slots, args.calls, args.repeats)
                )

    def best(name: str, draw: str, step: str) -> float:
        return min(run["steps"][draw][step]["best_us"] for run in runs[name])

    first = runs["this"][0]
    print(f"\n{first['items']} items, {first['cold_items']} cold, {args.cold_slots} cold slot(s); "
          "CPU us per call, best of all repeats\n")  # fmt: skip
    header = "| liked movies | step | this code |" + (
        " baseline | this / baseline |" if "baseline" in codes else ""
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    table: dict = {}
    for draw in first["steps"]:
        for step in STEPS:
            this = best("this", draw, step)
            row = {"this_us": round(this, 1)}
            line = f"| {draw} | {step} | {this:.1f} |"
            if "baseline" in codes:
                base = best("baseline", draw, step)
                row.update(baseline_us=round(base, 1), ratio=round(this / base, 2))
                line += f" {base:.1f} | {this / base:.2f} |"
            table.setdefault(draw, {})[step] = row
            print(line)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(args.bundle_root or "ml-latest-small (built)"),
        "items": first["items"],
        "cold_items": first["cold_items"],
        "cold_slots": args.cold_slots,
        "calls": args.calls,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "revision": _revision(ROOT),
        **({"baseline_revision": _revision(args.baseline_code)} if args.baseline_code else {}),
        "steps": table,
    }
    suffix = f"_{args.label}" if args.label else ""
    out = ROOT / "benchmarks" / "results" / f"cold_start_steps{suffix}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
