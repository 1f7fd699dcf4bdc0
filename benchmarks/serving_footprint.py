"""What the API costs to install and start: the slim serving install against the full project.

    python benchmarks/serving_footprint.py

Installs `recsys_serving` alone (a copy of pyproject.toml and the package, `pip install .`
without extras: what the `api` image holds) into a fresh virtual environment, then starts
`uvicorn recsys_serving.main:app` from it and from this checkout's full environment on the same
bundle (ml-latest-small beside the checkout, else synthetic), three times each, timing until
`/ready` answers and reading the process's resident memory. Results go to
benchmarks/results/serving_footprint.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_bench import DEFAULT_DATA, build_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def start_api(python: Path, bundles: Path, work: Path) -> tuple[float, float]:
    """Seconds until /ready answers 200, and resident MiB then."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "PATH": os.environ["PATH"],
        "RECSYS_BUNDLE_ROOT": str(bundles),
        "RECSYS_REQUEST_LOG": str(work / "requests.sqlite"),
        "RECSYS_PROJECT_ROOT": str(work),
    }
    started = time.perf_counter()
    server = subprocess.Popen(
        [
            str(python),
            "-m",
            "uvicorn",
            "recsys_serving.main:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=work,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit(f"the API from {python} did not become ready")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        return seconds, rss
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="recsys-footprint-") as scratch:
        work = Path(scratch)
        source = work / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source / name)
        shutil.copytree(
            ROOT / "recsys_serving", source / "recsys_serving", ignore=shutil.ignore_patterns("__pycache__")
        )
        slim = work / "slim"
        print("installing recsys_serving alone into a fresh environment", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(slim)], check=True)
        subprocess.run([str(slim / "bin" / "pip"), "install", "-q", str(source)], check=True)
        installed = subprocess.run(
            [str(slim / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True, check=True
        ).stdout.split()
        bundle = build_bundle(
            work, DEFAULT_DATA if DEFAULT_DATA.is_dir() else None, None if DEFAULT_DATA.is_dir() else 100_000
        )
        full = Path(sys.prefix)
        runs = {"slim": [], "full": []}
        for _ in range(3):  # alternating, so the machine's drift touches both alike
            runs["slim"].append(start_api(slim / "bin" / "python", bundle.parent, work))
            runs["full"].append(start_api(full / "bin" / "python", bundle.parent, work))
        report = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "bundle": {"version": bundle.name, "users": len(np.load(bundle / "user_ids.npy"))},
            "cpus": os.cpu_count(),
        }
        for name, prefix in (("slim", slim), ("full", full)):
            report[name] = {
                "environment_mb": round(size_mb(prefix), 1),
                "start_seconds_median": round(statistics.median(s for s, _ in runs[name]), 2),
                "resident_mib_median": round(statistics.median(r for _, r in runs[name]), 1),
                "starts": [[round(s, 2), round(r, 1)] for s, r in runs[name]],
            }
        report["slim"]["distributions"] = len(installed)
        report["slim_over_full"] = {
            key: round(report["slim"][key] / report["full"][key], 2)
            for key in ("environment_mb", "start_seconds_median", "resident_mib_median")
        }
    output = ROOT / "benchmarks" / "results" / "serving_footprint.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {output}")


if __name__ == "__main__":
    main()
