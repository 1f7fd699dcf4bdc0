"""Serving throughput and latency, each recommendation route against /health on the same server.

    python benchmarks/serve_bench.py                       # ml-latest-small beside the checkout
    python benchmarks/serve_bench.py --synthetic 1000000   # or synthetic data of that size
    python benchmarks/serve_bench.py --kind ease            # a bundle of another model kind
    python benchmarks/serve_bench.py --baseline-code ../old  # also serve from another checkout
    python benchmarks/serve_bench.py --bundle-root RUN/data/bundles --label 25m  # a pipeline's bundle

Builds a bundle with the pipeline's own code, starts `uvicorn recsys_serving.main:app` (one
worker) on 127.0.0.1, and drives it with a bounded keep-alive load generator at fixed
concurrency, each route in rounds paired with a /health run just before it. Prints requests/s
and p50/p95/p99 per route with the median paired ratio to /health, then re-runs known-user
recommendations paced at half their measured throughput to report p99 under moderate load, and
measures known users (plain and explained) and similar movies again on a server that computes them instead of using the
precomputed ones, then known users and cold start with an A/B experiment running, and finally
with no cold slots (RECSYS_COLD_SLOTS=0):
the bundle is built as the pipeline builds it, cold items (movies the model does not score)
included, so the default serves one cold slot per list. With ``--baseline-code`` (a checkout of another revision, e.g. from
``git worktree add``), the same bundle is also served by that revision's ``recsys_serving`` and
every route measured the same way, so a change to the serving code is judged against its
predecessor in one run; then the baseline's server and two of this code's run side by side and
the routes that compute per request alternate between them in 1 s bursts
(``--interleaved-rounds``), which compares their CPU per request within seconds of each other,
the second server of this code giving the spread of identical code. Results go to benchmarks/results/serve_bench_<kind>.json. Client and
server share this machine's cores, so absolute numbers depend on it; the ratios are the
comparable figures. Each route's server CPU time per request (the server process's, from
/proc) is printed beside them: how much of the machine the load generator took moves a ratio,
not that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "movielens" / "ml-latest-small"


def build_bundle(root: Path, data_dir: Path | None, synthetic: int | None, kind: str = "als") -> Path:
    from recsys_assets.modeling.packaging import package_bundle
    from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
    from recsys_assets.processing.content import content_vectors
    from recsys_assets.processing.interactions import InteractionRules, build_interactions
    from recsys_assets.processing.splits import SplitRules, temporal_split
    from recsys_assets.sources.formats import read_movies, read_ratings, read_tags
    from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
    from recsys_serving.promotion import promote

    if data_dir is None:
        cfg = SyntheticConfig(
            n_users=max(1000, synthetic // 100),
            n_movies=max(3000, synthetic // 400),
            n_ratings=synthetic,
        )
        data_dir = write_dataset(cfg, root / "synthetic")
    ratings, movies = read_ratings(data_dir), read_movies(data_dir)
    interactions, _ = build_interactions(ratings, InteractionRules())
    splits = temporal_split(interactions, SplitRules(strategy="leave_last_n", n=2))
    plan = TrainingPlan(tune=False, bootstrap_samples=0, model_kind=kind)
    model = train_and_evaluate(splits, plan, info=lambda _: None)
    path = package_bundle(
        root / "bundles",
        model,
        movies,
        ratings,
        splits,
        {"dataset": {"source": str(data_dir)}},
        content=content_vectors(movies, read_tags(data_dir)),
    )
    promote(root / "bundles", path.name, reason="benchmark")
    return path


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


def _raw(method: str, path: str, body: dict | None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


async def drive(
    port: int, requests: list[bytes], concurrency: int, seconds: float, rate: float | None = None
) -> dict:
    """Closed loop at fixed concurrency (or paced to ``rate`` requests/s in total) for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    per_connection = rate / concurrency if rate else None

    async def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        next_at = time.perf_counter()
        try:
            while time.perf_counter() < deadline:
                if per_connection:
                    next_at += rng.expovariate(per_connection)
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                started = time.perf_counter()
                status = await _request(reader, writer, requests[rng.randrange(len(requests))])
                latencies.append(time.perf_counter() - started)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return summary([np.array(latencies) * 1000], time.perf_counter() - started, errors)


def summary(latencies_ms: list[np.ndarray], elapsed: float, errors: int, **extra: float) -> dict:
    ms = np.concatenate(latencies_ms)
    return {
        "ms": ms,
        "elapsed": elapsed,
        "errors": errors,
        "rps": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        **extra,
    }


def combined(runs: list[dict], **extra: float) -> dict:
    return summary(
        [r["ms"] for r in runs], sum(r["elapsed"] for r in runs), sum(r["errors"] for r in runs), **extra
    )


@dataclass(frozen=True)
class Server:
    port: int
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user and system, all threads) the server process has used; NaN without
        Linux's /proc. A route's share of the server's CPU does not depend on how much of the
        machine the load generator took, which moves a ratio to /health by several points here."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(work: Path, code: Path | None = None, **env: str) -> Iterator[Server]:
    """A uvicorn server (one worker) on the promoted bundle under ``work``, running the serving
    code of the checkout ``code`` (this one by default)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "RECSYS_BUNDLE_ROOT": str(work / "bundles"),
        "RECSYS_REQUEST_LOG": str(work / "requests.sqlite"),
        "RECSYS_RATE_LIMIT_PER_SECOND": "0",
        **({"PYTHONPATH": str(code)} if code else {}),
        **env,
    }
    if code is not None:
        where = subprocess.run(
            [sys.executable, "-c", "import recsys_serving; print(recsys_serving.__file__)"],
            env=environment, cwd=code, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).resolve().is_relative_to(Path(code).resolve()):
            raise SystemExit(f"--baseline-code: recsys_serving resolves to {where}, not under {code}")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "recsys_serving.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=environment, cwd=code,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
                    if b" 200 " in conn.recv(1024):
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.3)
        yield Server(port, server.pid)
    finally:
        server.terminate()
        server.wait(30)


def with_cpu(server: Server, requests: list[bytes], concurrency: int, seconds: float) -> dict:
    """:func:`drive` at fixed concurrency, with the server's CPU time per request (us)."""
    before = server.cpu_seconds()
    result = asyncio.run(drive(server.port, requests, concurrency, seconds))
    return {**result, "cpu_us": (server.cpu_seconds() - before) / max(len(result["ms"]), 1) * 1e6}


def measure(
    server: Server, routes: dict[str, list[bytes]], concurrency: int, seconds: float, rounds: int
) -> dict[str, dict]:
    """Each route in ``rounds`` short runs, each paired with a /health run just before it.

    Shared machines drift over a minute; pairing keeps each ratio to /health within seconds, and
    the reported ratio is the median of the paired ones. Beside it, the server's CPU time per
    request (median over the runs, microseconds) and that cost relative to /health's.
    """
    health = routes["/health"]
    for requests in routes.values():  # warm up
        asyncio.run(drive(server.port, requests, concurrency, 1.0))

    def run(requests: list[bytes]) -> dict:
        return with_cpu(server, requests, concurrency, seconds / rounds)

    health_runs, results = [], {}
    for name, requests in routes.items():
        if requests is health:
            continue
        pairs = []
        for _ in range(rounds):
            before = run(health)
            pairs.append((before, run(requests)))
        health_runs += [h for h, _ in pairs]
        results[name] = combined(
            [r for _, r in pairs],
            ratio=float(np.median([r["rps"] / h["rps"] for h, r in pairs])),
            cpu_us=float(np.median([r["cpu_us"] for _, r in pairs])),
            cpu_vs_health=float(np.median([h["cpu_us"] / r["cpu_us"] for h, r in pairs])),
        )
    return {
        "/health": combined(
            health_runs,
            ratio=1.0,
            cpu_us=float(np.median([h["cpu_us"] for h in health_runs])),
            cpu_vs_health=1.0,
        ),
        **results,
    }


def interleaved(
    servers: list[Server], routes: dict[str, list[bytes]], concurrency: int, burst: float, rounds: int
) -> dict[str, dict]:
    """Servers compared by CPU time per request, all alive at once: in each round every route runs
    a ``burst`` of seconds on each server in turn (the order reversed every other round), so every
    server meets the same phases of the machine. Per route: each server's median CPU per request,
    and the median of the per-round ratios to the first server's, with a bootstrap 95% interval.

    On this shared machine a server's CPU per request moves by a third within minutes; measured
    one after the other, two revisions differ by that much with identical code.
    """
    for server in servers:
        for requests in routes.values():  # warm up
            asyncio.run(drive(server.port, requests, concurrency, 1.0))
    cpu = {name: np.zeros((rounds, len(servers))) for name in routes}
    for round_ in range(rounds):
        order = list(range(len(servers)))[:: -1 if round_ % 2 else 1]
        for name, requests in routes.items():
            for i in order:
                cpu[name][round_, i] = with_cpu(servers[i], requests, concurrency, burst)["cpu_us"]
    rng = np.random.default_rng(0)
    compared = {}
    for name, per_round in cpu.items():
        ratios = per_round[:, 1:] / per_round[:, :1]
        resampled = np.array(
            [np.median(ratios[rng.integers(0, rounds, rounds)], axis=0) for _ in range(2000)]
        )
        low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
        compared[name] = {
            "cpu_us": np.median(per_round, axis=0).tolist(),
            "ratio_to_first": np.median(ratios, axis=0).tolist(),
            "interval": np.stack([low, high], axis=1).tolist(),
        }
    return compared


def measure_users(work: Path, routes: dict[str, list[bytes]], args: argparse.Namespace, **env: str) -> dict:
    """Known users and cold start (with /health beside them) on a server with ``env`` set."""
    names = ("/health", "GET /users/{id}/recommendations", "POST /recommendations (5 liked)")
    with serving(work, **env) as server:
        return measure(
            server, {name: routes[name] for name in names}, args.concurrency, args.seconds, args.rounds
        )


def scalars(result: dict) -> dict:
    keys = ("rps", "ratio", "p50", "p95", "p99", "errors", "cpu_us", "cpu_vs_health")
    return {k: float(result[k]) for k in keys if k in result}


def _revision(checkout: Path) -> str:
    found = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    parser.add_argument("--synthetic", type=int, default=None, help="use synthetic data of this many ratings")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="per route")
    parser.add_argument("--rounds", type=int, default=4, help="paired /health and route runs per route")
    parser.add_argument(
        "--kind", choices=["als", "ease", "item_knn"], default="als", help="the model kind served"
    )
    parser.add_argument(
        "--baseline-code", type=Path, default=None, help="a checkout whose serving code to measure too"
    )
    parser.add_argument(
        "--bundle-root",
        type=Path,
        default=None,
        help="serve the bundle promoted under this root (e.g. a whole_graph.py run's) instead of building one",
    )
    parser.add_argument(
        "--interleaved-rounds",
        type=int,
        default=20,
        help="with --baseline-code: rounds of 1 s bursts alternating between the baseline's server and"
        " two of this code's (0: none)",
    )
    parser.add_argument("--label", default="", help="results go to serve_bench_<kind>[_<label>].json")
    args = parser.parse_args()
    data_dir = None if args.synthetic else args.data_dir
    if data_dir is None and not args.synthetic:
        args.synthetic = 100_000

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        from recsys_serving.bundle import load_bundle
        from recsys_serving.promotion import promoted_path

        if args.bundle_root:
            (work / "bundles").symlink_to(args.bundle_root.resolve(), target_is_directory=True)
            bundle_path = promoted_path(work / "bundles")
            if bundle_path is None:
                raise SystemExit(f"--bundle-root: no bundle is promoted under {args.bundle_root}")
        else:
            bundle_path = build_bundle(work, data_dir, args.synthetic, args.kind)

        bundle = load_bundle(bundle_path)
        rng = np.random.default_rng(0)
        users = rng.choice(bundle.user_ids, size=min(500, len(bundle.user_ids)), replace=False)
        movies = rng.choice(bundle.item_ids, size=min(500, len(bundle.item_ids)), replace=False)
        # New users mostly like movies many people have seen: liked movies drawn the way the
        # training ratings fall on movies (the uniform draw above is the hard case for the search).
        ratings_per_movie = np.bincount(bundle.seen.indices, minlength=len(bundle.item_ids))
        by_popularity = ratings_per_movie / ratings_per_movie.sum()
        known = "GET /users/{id}/recommendations"
        similar = "GET /movies/{id}/similar"
        explained = "  ... &explain=true"
        uniform_liked = [rng.choice(movies, 5).tolist() for _ in range(300)]
        uniform_cold = [
            _raw("POST", "/recommendations", {"liked": liked, "k": 10}) for liked in uniform_liked
        ]
        routes = {
            "/health": [_raw("GET", "/health", None)],
            known: [_raw("GET", f"/users/{u}/recommendations?k=10", None) for u in users],
            explained: [_raw("GET", f"/users/{u}/recommendations?k=10&explain=true", None) for u in users],
            "POST /recommendations (5 liked)": uniform_cold,
            # The same draws with each movie's reason: the fold-in's per-liked-movie terms.
            "  ... 5 liked, explain=true": [
                _raw("POST", "/recommendations", {"liked": liked, "k": 10, "explain": True})
                for liked in uniform_liked
            ],
            "  ... 5 liked by popularity": [
                _raw(
                    "POST",
                    "/recommendations",
                    {
                        "liked": rng.choice(bundle.item_ids, 5, replace=False, p=by_popularity).tolist(),
                        "k": 10,
                    },
                )
                for _ in range(300)
            ],
            # The same route with nothing to fold in (an unknown movie: the popularity fallback):
            # what the route costs without its search, the ceiling for a cold start.
            "POST /recommendations (no known movie)": [
                _raw("POST", "/recommendations", {"liked": [-1 - int(m)], "k": 10}) for m in movies[:50]
            ],
            similar: [_raw("GET", f"/movies/{m}/similar?k=10", None) for m in movies],
            "GET /popular": [_raw("GET", "/popular?k=10", None)],
        }
        if bundle.cold is not None and len(bundle.cold.movie_ids):
            cold_movies = rng.choice(
                bundle.cold.movie_ids, size=min(500, len(bundle.cold.movie_ids)), replace=False
            )
            routes["GET /movies/{new id}/similar (content)"] = [
                _raw("GET", f"/movies/{m}/similar?k=10", None) for m in cold_movies
            ]
        with serving(work) as server:
            results = measure(server, routes, args.concurrency, args.seconds, args.rounds)
            paced = asyncio.run(
                drive(
                    server.port, routes[known], args.concurrency, args.seconds, rate=results[known]["rps"] / 2
                )
            )
        # The same known-user (plain and explained) and similar-movie requests computed (a scan of the item factors for
        # ALS, the liked row times the matrix for item-item kinds) instead of read from the
        # precomputed lists, against a /health measured on that server too.
        with serving(work, RECSYS_PRECOMPUTED_LISTS="false") as server:
            searched = measure(
                server,
                {name: routes[name] for name in ("/health", known, explained, similar)},
                args.concurrency,
                args.seconds,
                args.rounds,
            )
        # Known users and cold start with an A/B experiment running (both arms on the champion, so
        # only the split itself is measured: the hash, the arm in every response and log row).
        from recsys_serving.experiments import Arm, Experiment, start_experiment, stop_experiment

        start_experiment(
            work / "bundles",
            Experiment(
                id="bench",
                arms=[
                    Arm(name="control", bundle="champion", weight=9),
                    Arm(name="treatment", bundle="champion", weight=1),
                ],
            ),
        )
        with_experiment = measure_users(work, routes, args)
        stop_experiment(work / "bundles", "benchmark done")
        # Known users and cold start without the cold slot: what the slot costs.
        cold_off = measure_users(work, routes, args, RECSYS_COLD_SLOTS="0")
        baseline = None
        if args.baseline_code:
            with serving(work, args.baseline_code) as server:
                baseline = measure(server, routes, args.concurrency, args.seconds, args.rounds)
            with serving(work) as server:  # this code again, right after: the machine's drift shows
                again = measure(server, routes, args.concurrency, args.seconds, args.rounds)
            compared = {}
            if args.interleaved_rounds:
                # The routes that compute per request, each server with its own request log.
                computed = [
                    "/health",
                    known,
                    explained,
                    *(n for n in routes if n.startswith(("POST", "  ... 5"))),
                ]
                with ExitStack() as servers:
                    started = [
                        servers.enter_context(
                            serving(work, code, RECSYS_REQUEST_LOG=str(work / f"requests-{i}.sqlite"))
                        )
                        for i, code in enumerate([args.baseline_code, None, None])
                    ]
                    compared = interleaved(
                        started,
                        {name: routes[name] for name in computed},
                        args.concurrency,
                        1.0,
                        args.interleaved_rounds,
                    )

    print(
        f"\n{bundle.kind} bundle: {len(bundle.user_ids):,} users x {len(bundle.item_ids):,} items, "
        f"lists of {bundle.manifest.get('precomputed_top_n', 0)} precomputed per user"
    )
    print(
        f"uvicorn, 1 worker; {args.concurrency} keep-alive connections; {args.seconds:g}s per route; {os.cpu_count()} CPUs\n"
    )
    print(
        "| route | req/s | vs /health (median of paired runs) | p50 ms | p95 ms | p99 ms | errors "
        "| server CPU us/request | /health's CPU / route's |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [
        *results.items(),
        *(
            (f"{name}, computed (RECSYS_PRECOMPUTED_LISTS=false)", searched[name])
            for name in (known, explained, similar)
        ),
    ]
    for name, r in rows:
        print(
            f"| {name} | {r['rps']:.0f} | {r['ratio']:.0%} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} "
            f"| {r['errors']} | {r['cpu_us']:.0f} | {r['cpu_vs_health']:.0%} |"
        )
    print(f"(/health on the index-search server: {searched['/health']['rps']:.0f} req/s)")
    print("\nwith an A/B experiment running (90/10, both arms on the champion):")
    for name in (known, "POST /recommendations (5 liked)"):
        print(
            f"  {name}: {with_experiment[name]['ratio']:.0%} of /health (without: {results[name]['ratio']:.0%})"
        )
    cold_items = 0 if bundle.cold is None else len(bundle.cold.movie_ids)
    print(f"\nwithout the cold slot (RECSYS_COLD_SLOTS=0; the bundle has {cold_items:,} cold movies):")
    for name in (known, "POST /recommendations (5 liked)"):
        print(
            f"  {name}: {cold_off[name]['ratio']:.0%} of /health (with one cold slot: {results[name]['ratio']:.0%})"
        )
    print(
        f"\nknown-user recommendations paced at half their throughput ({paced['rps']:.0f} req/s): "
        f"p50 {paced['p50']:.2f} ms, p95 {paced['p95']:.2f} ms, p99 {paced['p99']:.2f} ms, errors {paced['errors']}"
    )
    print(
        f"target: >= 70% of /health throughput -> {results[known]['ratio']:.0%}; p99 < 10 ms at half -> {paced['p99']:.2f} ms"
    )
    if baseline is not None:
        print(
            f"\nserving code against {args.baseline_code}: ratio to /health (median of paired runs) "
            "and the server's CPU us per request\n"
        )
        print("| route | baseline | this code (first run) | this code (after the baseline) |")
        print("|---|---|---|---|")
        for name in routes:
            print(
                f"| {name} | "
                + " | ".join(
                    f"{r[name]['ratio']:.0%}, {r[name]['cpu_us']:.0f} us" for r in (baseline, results, again)
                )
                + " |"
            )
    if baseline is not None and compared:
        print(
            f"\nserver CPU us per request, servers alive together, {args.interleaved_rounds} rounds of 1 s "
            "bursts alternating between them; ratios: median of the rounds' [bootstrap 95% interval]\n"
        )
        print(
            "| route | baseline | this code | this / baseline | this code, a second server | second / baseline |"
        )
        print("|---|---|---|---|---|---|")
        for name, c in compared.items():
            (low, high), (low2, high2) = c["interval"]
            print(
                f"| {name} | {c['cpu_us'][0]:.0f} | {c['cpu_us'][1]:.0f} | {c['ratio_to_first'][0]:.3f} "
                f"[{low:.3f}, {high:.3f}] | {c['cpu_us'][2]:.0f} | {c['ratio_to_first'][1]:.3f} [{low2:.3f}, {high2:.3f}] |"
            )
    output = (
        ROOT
        / "benchmarks"
        / "results"
        / f"serve_bench_{'_'.join(filter(None, [bundle.kind, args.label]))}.json"
    )
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": bundle.kind,
        "users": len(bundle.user_ids),
        "items": len(bundle.item_ids),
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "seconds_per_route": args.seconds,
        "rounds": args.rounds,
        "routes": {name: scalars(r) for name, r in rows},
        "paced_known_user": scalars(paced),
        "cold_items": cold_items,
        "without_cold_slots": {name: scalars(r) for name, r in cold_off.items()},
        "with_experiment": {name: scalars(r) for name, r in with_experiment.items()},
    }
    if baseline is not None:
        report["baseline"] = {
            "code": str(args.baseline_code),
            "revision": _revision(args.baseline_code),
            "routes": {name: scalars(r) for name, r in baseline.items()},
            "this_code_after_the_baseline": {name: scalars(r) for name, r in again.items()},
            "interleaved": {"rounds": args.interleaved_rounds, "burst_seconds": 1.0, "routes": compared},
        }
    report["revision"] = _revision(ROOT)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
