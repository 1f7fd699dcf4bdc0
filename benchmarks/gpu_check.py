"""implicit's CUDA ALS against its CPU ALS on the same data, printed and written to
benchmarks/results/gpu_check.json. Run it on a machine with a GPU and the `gpu` extra:

    pip install -e '.[gpu]'
    python benchmarks/gpu_check.py                          # synthetic data in ml-25m's shape
    python benchmarks/gpu_check.py --ratings 5000000        # smaller synthetic data
    python benchmarks/gpu_check.py --data-dir DIR           # a MovieLens copy
    python benchmarks/gpu_check.py --ratings 200000 --dry-run-on-cpu   # the script itself, no GPU

Protocol: the positives the pipeline would train on (its default interaction rules, every
rating, no split) weighted with the default ALS confidence. (1) Equality: the project's `ALS`
wrapper fits `--compare-iterations` iterations on the CPU and on the GPU from the same seeded
start factors; on a seeded sample of users the relative difference of the two score matrices and
the share of each user's top 10 that both rank there must be within the tolerances below. (2)
Speed: a full-size fit on each device from its own random start (the default 64 factors, then
each of `--factors`), seconds per iteration (median over iterations after the first), and the
training loss each fit reaches. Without usable CUDA the script stops saying why, unless
`--dry-run-on-cpu` compares the CPU with itself to check the script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from recsys_assets.modeling.evaluation import agreement, sample_users
from recsys_assets.modeling.matrices import IdMap, to_csr
from recsys_assets.modeling.recommenders import ALS, ALSParams
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.sources.formats import read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
MAX_SCORE_DIFFERENCE = 1e-2
MIN_TOP_10_OVERLAP = 0.95


def matrix_of(directory: Path):
    interactions, _ = build_interactions(read_ratings(directory), InteractionRules())
    return to_csr(interactions, IdMap.from_frame(interactions))


def timed_fit(params: ALSParams, matrix, start=None, iterations: int | None = None) -> tuple[ALS, dict]:
    marks: list[float] = []
    losses: list[float | None] = []

    def record(iteration: int, elapsed: float, loss: float | None) -> None:
        marks.append(elapsed)
        losses.append(loss)

    model = ALS(params, on_iteration=record)
    model.fit(matrix, start=start, iterations=iterations)
    # the first iteration carries the set-up (transpose, transfer to the device, CUDA start-up)
    steps = np.diff(marks).tolist()
    return model, {
        "iterations": len(marks),
        "first_iteration_s": round(marks[0], 3),
        "seconds_per_iteration": round(statistics.median(steps), 4) if steps else None,
        "final_training_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--ratings", type=int, default=25_000_000)
    parser.add_argument("--compare-iterations", type=int, default=3)
    parser.add_argument("--compare-users", type=int, default=5_000)
    parser.add_argument("--factors", type=int, action="append", default=[])
    parser.add_argument("--dry-run-on-cpu", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recsys-gpu-check"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import implicit.gpu

    if not implicit.gpu.HAS_CUDA and not args.dry_run_on_cpu:
        sys.exit(
            "gpu_check: implicit cannot use CUDA here (no GPU visible, or rmm missing: "
            "pip install -e '.[gpu]'); --dry-run-on-cpu checks the script without a GPU"
        )
    if args.data_dir:
        directory, source = args.data_dir, str(args.data_dir)
    else:
        users = max(100, round(162_000 * args.ratings / 25_000_000))
        movies = max(200, round(62_000 * (args.ratings / 25_000_000) ** 0.5))
        config = SyntheticConfig(n_users=users, n_movies=movies, n_ratings=args.ratings)
        print(f"==> synthetic data: {args.ratings:,} ratings, {users:,} users x {movies:,} movies")
        directory = write_dataset(config, args.workdir / f"synthetic-{args.ratings}")
        source = f"synthetic, {args.ratings:,} ratings"
    matrix = matrix_of(directory)
    print(f"==> {matrix.shape[0]:,} users x {matrix.shape[1]:,} movies, {matrix.nnz:,} positives")

    cpu = ALSParams()
    other = cpu if args.dry_run_on_cpu else replace(cpu, use_gpu=True)
    rng = np.random.default_rng(cpu.seed)
    start = tuple(rng.random((n, cpu.factors), dtype=np.float32) * 0.01 for n in matrix.shape)
    print(f"==> equality: {args.compare_iterations} iterations on each device from the same start")
    reference, cpu_run = timed_fit(cpu, matrix, start, args.compare_iterations)
    candidate, other_run = timed_fit(other, matrix, start, args.compare_iterations)
    users = sample_users(np.flatnonzero(matrix.getnnz(axis=1) > 0), args.compare_users, seed=0)
    agreed = agreement(reference, candidate, users, matrix)
    passed = (
        agreed["relative_score_difference"] <= MAX_SCORE_DIFFERENCE
        and agreed["top_10_overlap"] >= MIN_TOP_10_OVERLAP
    )
    print(f"    {agreed} on {len(users):,} users: {'equal within tolerance' if passed else 'NOT EQUAL'}")

    speed = []
    for factors in [cpu.factors, *args.factors]:
        row = {"factors": factors}
        for device, params in (("cpu", cpu), ("gpu", other)):
            print(f"==> full fit on the {device}, {factors} factors, {params.iterations} iterations")
            _, row[device] = timed_fit(replace(params, factors=factors), matrix)
            print(f"    {row[device]}")
        row["speed_up"] = round(row["cpu"]["seconds_per_iteration"] / row["gpu"]["seconds_per_iteration"], 2)
        speed.append(row)
        print(f"    GPU speed-up per iteration: {row['speed_up']}x")

    payload = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "gpu": "none (dry run: the CPU against itself)" if args.dry_run_on_cpu else _gpu_name(),
        "data": source,
        "matrix": {"users": matrix.shape[0], "movies": matrix.shape[1], "positives": int(matrix.nnz)},
        "protocol": __doc__.split("Protocol: ", 1)[1].strip(),
        "equality": {
            "iterations": args.compare_iterations,
            "users": len(users),
            **agreed,
            "tolerance": {
                "relative_score_difference": MAX_SCORE_DIFFERENCE,
                "top_10_overlap": MIN_TOP_10_OVERLAP,
            },
            "passed": passed,
            "cpu": cpu_run,
            "gpu": other_run,
        },
        "speed": speed,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(args.output)
    print(f"wrote {args.output}")
    if not passed:
        sys.exit(1)


def _gpu_name() -> str:
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        names = ""
    return names or "a CUDA device (nvidia-smi not available)"


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f}s")
