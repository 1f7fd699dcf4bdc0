"""Replay a dataset's later period as a stream of rating batches.

Ratings before the cutoff are *history* (what the graph trains on first); the rest is cut into
batches by time window (default one week) or by count, each written atomically into the incoming
folder as a MovieLens-format CSV named by its window. Fault injection produces the bad deliveries
the pipeline must survive: a malformed file, unknown movie ids, a re-delivered batch, an empty one.
A state file remembers how far the stream has got, so successive runs continue it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ..settings import Settings
from ..storage import atomic_path

FAULTS = ("malformed", "unknown_movies", "duplicate", "empty")
STATE_FILE = "simulator.json"


def parse_day(value: str) -> int:
    try:
        return int(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def split_history(ratings: pl.DataFrame, cutoff_ts: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(history, stream): ratings before the cutoff, and from it on, each sorted by time."""
    ordered = ratings.sort("timestamp", "user_id", "movie_id")
    return ordered.filter(pl.col("timestamp") < cutoff_ts), ordered.filter(pl.col("timestamp") >= cutoff_ts)


@dataclass(frozen=True)
class Batch:
    name: str
    frame: pl.DataFrame


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def cut_batches(
    stream: pl.DataFrame, cutoff_ts: int, window_days: float | None = 7, count: int | None = None
) -> list[Batch]:
    """Windows of ``window_days`` from the cutoff (named by their dates), or runs of ``count`` ratings.

    Windows without ratings are kept as empty batches: a quiet week is data too."""
    if count is not None:
        if count < 1:
            raise ValueError("count must be at least 1")
        return [
            Batch(f"ratings-{i // count + 1:06d}", stream.slice(i, count))
            for i in range(0, len(stream), count)
        ]
    if not window_days or window_days <= 0:
        raise ValueError("window_days must be positive")
    if stream.is_empty():
        return []
    width = int(window_days * 86_400)
    last = int(stream.select(pl.col("timestamp").max()).item())
    batches = []
    start = cutoff_ts
    while start <= last:
        end = start + width
        frame = stream.filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end))
        batches.append(Batch(f"ratings-{_day(start)}_{_day(end)}", frame))
        start = end
    return batches


def to_movielens(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("user_id").alias("userId"),
        pl.col("movie_id").alias("movieId"),
        pl.col("rating"),
        pl.col("timestamp"),
    )


def write_batch(
    directory: Path,
    name: str,
    frame: pl.DataFrame,
    fault: str | None = None,
    known_movies: set[int] | None = None,
) -> Path:
    """Write one batch as ``<name>.csv`` atomically; ``fault`` spoils it on purpose."""
    target = Path(directory) / f"{name}.csv"
    data = to_movielens(frame)
    with atomic_path(target) as temporary:
        if fault == "empty":
            data.clear().write_csv(temporary)
        elif fault == "unknown_movies":
            unknown = max(known_movies or {0}) + 1_000_000
            spoiled = data.with_columns(
                pl.when(pl.int_range(pl.len()) % 3 == 0)
                .then(pl.lit(unknown))
                .otherwise(pl.col("movieId"))
                .alias("movieId")
            )
            spoiled.write_csv(temporary)
        elif fault == "malformed":
            text = data.write_csv()
            lines = text.splitlines()
            middle = max(1, len(lines) // 2)
            lines[middle] = lines[middle].rsplit(",", 2)[0]  # a truncated line
            lines.insert(1, "12,34,four-and-a-half,1500000000")  # a non-numeric rating
            temporary.write_text("\n".join(lines) + "\n")
        elif fault is None:
            data.write_csv(temporary)
        else:
            raise ValueError(f"unknown fault {fault!r}: use one of {FAULTS}")
    return target


@dataclass
class SimulatorState:
    cutoff: str
    emitted: int = 0  # batches of the stream already delivered

    @classmethod
    def load(cls, path: Path, cutoff: str) -> SimulatorState:
        if path.is_file():
            state = cls(**json.loads(path.read_text()))
            if state.cutoff != cutoff:
                raise ValueError(
                    f"{path} continues a stream cut at {state.cutoff}, not {cutoff}: delete it to start over"
                )
            return state
        return cls(cutoff=cutoff)

    def save(self, path: Path) -> None:
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(self.__dict__, indent=2) + "\n")


def parse_faults(spec: list[str]) -> dict[int, str]:
    """``["malformed@2", "empty@5"]`` -> {2: "malformed", 5: "empty"} (1-based batch numbers of this run)."""
    faults = {}
    for item in spec:
        kind, _, position = item.partition("@")
        if kind not in FAULTS or not position.isdigit() or int(position) < 1:
            raise ValueError(f"--inject {item!r}: expected KIND@N with KIND in {FAULTS} and N >= 1")
        faults[int(position)] = kind
    return faults


def simulate(
    ratings: pl.DataFrame,
    incoming: Path,
    state_path: Path,
    cutoff: str,
    batches: int,
    window_days: float | None = 7,
    count: int | None = None,
    faults: dict[int, str] | None = None,
    per_minute: float | None = None,
    say=print,
) -> list[Path]:
    """Deliver the next ``batches`` batches of the stream into ``incoming``; returns the files."""
    faults = faults or {}
    cutoff_ts = parse_day(cutoff)
    history, stream = split_history(ratings, cutoff_ts)
    all_batches = cut_batches(stream, cutoff_ts, window_days, count)
    state = SimulatorState.load(state_path, cutoff)
    known_movies = set(ratings["movie_id"].unique().to_list())
    incoming.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    previous: Batch | None = all_batches[state.emitted - 1] if state.emitted else None
    previous_bytes: bytes | None = None
    for number in range(1, batches + 1):
        fault = faults.get(number)
        if fault == "duplicate":
            if previous is None:
                raise ValueError("a duplicate batch needs an earlier batch to re-deliver")
            # The same bytes as delivered (the pipeline may already have moved the original).
            if previous_bytes is None:
                previous_bytes = to_movielens(previous.frame).write_csv().encode()
            path = incoming / f"{previous.name}-redelivered.csv"
            with atomic_path(path) as temporary:
                temporary.write_bytes(previous_bytes)
            say(f"re-delivered {previous.name} as {path.name}")
        else:
            if state.emitted >= len(all_batches):
                say(f"the stream is exhausted after {len(all_batches)} batches")
                break
            batch = all_batches[state.emitted]
            path = write_batch(incoming, batch.name, batch.frame, fault, known_movies)
            state.emitted += 1
            state.save(state_path)
            previous, previous_bytes = batch, path.read_bytes()
            note = f" [fault: {fault}]" if fault else ""
            say(f"delivered {path.name}: {len(batch.frame):,} ratings{note}")
        written.append(path)
        if per_minute and number < batches:
            time.sleep(60.0 / per_minute)
    say(
        f"history: {len(history):,} ratings before {cutoff}; stream: {state.emitted}/{len(all_batches)} batches delivered"
    )
    return written


def stream_source(parser: argparse.ArgumentParser, cutoff: str | None) -> tuple[Settings, str, pl.DataFrame]:
    """For the stream's command-line tools: the settings, the stream's first day (``cutoff`` or
    RECSYS_HISTORY_CUTOFF) and every rating of the configured source."""
    settings = Settings.from_env()
    cutoff = cutoff or settings.history_cutoff
    if not cutoff:
        parser.error("give --cutoff or set RECSYS_HISTORY_CUTOFF (the graph trains on ratings before it)")
    from ..sources.formats import read_ratings
    from ..sources.resolve import resolve_options

    source = resolve_options(
        settings.source_options(), warn=lambda message: print(f"warning: {message}", file=sys.stderr)
    )
    return settings, cutoff, read_ratings(source.directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Replay the dataset after a cutoff as batches of new ratings in data/stream/incoming."
    )
    parser.add_argument("--cutoff", help="first day of the stream (default: RECSYS_HISTORY_CUTOFF)")
    parser.add_argument("--batches", type=int, default=1, help="how many batches to deliver now")
    parser.add_argument("--window-days", type=float, default=7.0, help="batch by time window (days)")
    parser.add_argument("--count", type=int, help="batch by number of ratings instead of time")
    parser.add_argument("--rate", type=float, help="batches per minute (a live demo); default: all at once")
    parser.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND@N",
        help=f"fault in the N-th batch: {', '.join(FAULTS)}",
    )
    args = parser.parse_args(argv)

    settings, cutoff, ratings = stream_source(parser, args.cutoff)
    stream_root = settings.stream_root
    try:
        simulate(
            ratings,
            stream_root / "incoming",
            stream_root / STATE_FILE,
            cutoff,
            args.batches,
            None if args.count else args.window_days,
            args.count,
            parse_faults(args.inject),
            args.rate,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
