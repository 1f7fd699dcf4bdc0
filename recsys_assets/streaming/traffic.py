"""Traffic with ground truth: replay, against a running API, the requests the stream's users would
have made just before rating.

For each user who rates in a batch of the stream, one request for their recommendations is sent
*before* the batch is delivered, stamped with a simulated time (``X-Simulated-Time``: one second
before the user's first rating in the batch), which the API records in its request log. The
ratings the batch then delivers are the ground truth the ``replay_evaluation`` asset scores the
served lists against: no click model is invented. Requests go at a bounded rate and concurrency;
a request that fails (the API down, a 5xx, a 429) is retried with exponential backoff, and what
could not be sent in the end is reported, never silently dropped.

    recsys-replay --batches 1          # the next batch recsys-simulate will deliver
    recsys-simulate --batches 1        # then deliver it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import polars as pl

from ..storage import atomic_path
from .simulator import STATE_FILE, Batch, SimulatorState, cut_batches, parse_day, split_history, stream_source

RETRIED_STATUSES = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Visit:
    user_id: int
    at: int  # simulated unix time of the request: just before the user's first rating in the batch
    batch: str


def visits(batch: Batch) -> list[Visit]:
    """One request per user who rates in ``batch``, in the order of their first rating."""
    first = batch.frame.group_by("user_id").agg(pl.col("timestamp").min()).sort("timestamp", "user_id")
    return [Visit(int(u), int(t) - 1, batch.name) for u, t in first.iter_rows()]


@dataclass
class ReplayReport:
    sent: int = 0
    answered: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)  # {user_id, batch, at, reason}
    seconds: float = 0.0


async def replay_traffic(
    url: str,
    planned: list[Visit],
    k: int = 10,
    concurrency: int = 8,
    rate: float | None = None,
    retries: int = 5,
    backoff: float = 0.2,
    timeout: float = 10.0,
) -> ReplayReport:
    """Send one request per visit at most ``rate`` per second with at most ``concurrency`` in
    flight; retry connection errors and 429/5xx up to ``retries`` times (backoff doubling)."""
    report = ReplayReport()
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def send(client: httpx.AsyncClient, number: int, visit: Visit) -> None:
        if rate:
            await asyncio.sleep(max(0.0, number / rate - (time.perf_counter() - started)))
        async with gate:
            reason = ""
            for attempt in range(retries + 1):
                if attempt:
                    report.retries += 1
                    await asyncio.sleep(backoff * 2 ** (attempt - 1))
                try:
                    response = await client.get(
                        f"/users/{visit.user_id}/recommendations",
                        params={"k": k},
                        headers={"X-Simulated-Time": str(visit.at)},
                    )
                except httpx.HTTPError as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    continue
                report.statuses[str(response.status_code)] = (
                    report.statuses.get(str(response.status_code), 0) + 1
                )
                if response.status_code == 200:
                    report.answered += 1
                    return
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRIED_STATUSES:
                    break
            report.failed.append({**asdict(visit), "reason": reason})

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        report.sent = len(planned)
        await asyncio.gather(*(send(client, number, visit) for number, visit in enumerate(planned)))
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def upcoming_batches(
    ratings: pl.DataFrame, cutoff: str, state_path: Path, count: int, window_days: float
) -> list[Batch]:
    """The next ``count`` batches the simulator will deliver (its state says how far it got)."""
    cutoff_ts = parse_day(cutoff)
    _, stream = split_history(ratings, cutoff_ts)
    emitted = SimulatorState.load(state_path, cutoff).emitted
    return cut_batches(stream, cutoff_ts, window_days)[emitted : emitted + count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Send the stream's users' recommendation requests to the API before their ratings arrive."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    parser.add_argument("--cutoff", help="first day of the stream (default: RECSYS_HISTORY_CUTOFF)")
    parser.add_argument("--batches", type=int, default=1, help="how many upcoming batches to replay")
    parser.add_argument("--window-days", type=float, default=7.0, help="the simulator's batch window")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rate", type=float, default=50.0, help="requests per second (0: as fast as possible)"
    )
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=0.2, help="seconds before the first retry, doubling")
    args = parser.parse_args(argv)

    settings, cutoff, ratings = stream_source(parser, args.cutoff)
    batches = upcoming_batches(
        ratings,
        cutoff,
        settings.stream_root / STATE_FILE,
        args.batches,
        args.window_days,
    )
    if not batches:
        print("the stream is exhausted: no upcoming batch to replay traffic for")
        return 0
    reports_dir = settings.stream_root / "traffic"
    reports_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for batch in batches:
        planned = visits(batch)
        report = asyncio.run(
            replay_traffic(
                args.url, planned, args.k, args.concurrency, args.rate or None, args.retries, args.backoff
            )
        )
        path = reports_dir / f"{batch.name}.json"
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps({"batch": batch.name, **asdict(report)}, indent=2) + "\n")
        failed += len(report.failed)
        print(
            f"{batch.name}: {report.answered}/{report.sent} requests answered in {report.seconds}s "
            f"({report.retries} retries); {len(report.failed)} not sent, listed in {path}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
