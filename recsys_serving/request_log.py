"""The request log: every recommendation request, in SQLite (WAL), written off the request path.

Requests append a row to a queue; one thread wakes every ``flush_seconds`` and inserts what has
accumulated in one transaction. ``close()`` drains the queue, so a graceful shutdown loses
nothing; a killed process loses at most the last ``flush_seconds`` of requests, and SQLite's
journal keeps the file a valid database. When the database cannot be written (disk full, file
read-only, locked), the rows stay queued (up to ``max_pending``, the oldest given up on past it),
serving goes on, ``error`` says why, and the next successful write clears it. The table is the
input for later KPI and replay evaluation.
"""

from __future__ import annotations

import itertools
import secrets
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,    -- see RequestIds
    ts REAL NOT NULL,               -- unix time the request arrived
    route TEXT NOT NULL,            -- route template, e.g. /users/{user_id}/recommendations
    user_id INTEGER,                -- null for cold-start requests
    cold_start INTEGER NOT NULL,    -- 1 when the user was folded in from liked movies
    strategy TEXT,                  -- als | fold_in | popular_fallback
    k INTEGER,
    items TEXT,                     -- JSON [[movieId, rank, score], ...]
    bundle_version TEXT,
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    experiment_id TEXT,             -- the A/B experiment running, null outside one
    arm TEXT,                       -- its arm that served the request
    simulated_ts REAL,              -- the client's clock (X-Simulated-Time) in traffic replay
    epsilon REAL                    -- the experiment's exploration rate (0: none; items then carry
                                    -- their propensity as a 4th element)
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""
# Columns added after the first release: an older log gains them (null for its old rows).
ADDED_COLUMNS = {"experiment_id": "TEXT", "arm": "TEXT", "simulated_ts": "REAL", "epsilon": "REAL"}
INSERT_ROWS = "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


class RequestIds:
    """Request ids: a random per-process prefix and a counter (32 hex digits, like a uuid4).

    Unique across processes and restarts, and increasing within a process, so the primary key
    index grows at its end: random uuid4 keys made each insert about three times as costly.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    ts: float
    route: str
    user_id: int | None
    cold_start: bool
    strategy: str | None
    k: int | None
    items: list[tuple[int, int, float]] | list[tuple[int, int, float, float]] | None
    bundle_version: str | None
    latency_ms: float
    status: int
    experiment_id: str | None = None
    arm: str | None = None
    simulated_ts: float | None = None
    epsilon: float | None = None

    def row(self) -> tuple[Any, ...]:
        # Spelled out: dataclasses.astuple deep-copies every item and cost more than the request.
        return (
            self.request_id,
            self.ts,
            self.route,
            self.user_id,
            int(self.cold_start),
            self.strategy,
            self.k,
            None if self.items is None else orjson.dumps(self.items).decode(),
            self.bundle_version,
            self.latency_ms,
            self.status,
            self.experiment_id,
            self.arm,
            self.simulated_ts,
            self.epsilon,
        )


class RequestLog:
    def __init__(self, path: Path, flush_seconds: float = 0.25, max_pending: int = 1_000_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_seconds, self.max_pending = flush_seconds, max_pending
        # deque.append and popleft are atomic, so requests never take a lock or wake the writer:
        # a queue.Queue notified the writer thread on every request, a GIL hand-off each time.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._stop = threading.Event()
        self.written = 0
        self.lost = 0
        self.error: str | None = None
        with sqlite3.connect(self.path) as connection:  # fail at startup, not in the writer
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            present = {row[1] for row in connection.execute("PRAGMA table_info(requests)")}
            for name, kind in ADDED_COLUMNS.items():
                if name not in present:
                    connection.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def log(self, record: RequestRecord) -> None:
        # The row is built here (microseconds) so the writer thread holds the GIL only briefly:
        # converting thousands of records there stalled the event loop.
        self._pending.append(record.row())

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _write(self, connection: sqlite3.Connection) -> None:
        """One transaction for everything pending: per-request commits cost more CPU than serving
        the request. Failures are reported in ``error`` (and /ready, /metrics); serving goes on."""
        batch = [self._pending.popleft() for _ in range(len(self._pending))]
        if not batch:
            return
        try:
            with connection:
                connection.executemany(INSERT_ROWS, batch)
            self.written += len(batch)
            self.error = None
            return
        except sqlite3.OperationalError as exc:  # the database, not a row: keep them for later
            self._keep(batch, exc)
            return
        except (sqlite3.Error, OverflowError):
            pass
        # One bad row must not cost the batch: retry row by row and give up only on what fails.
        for position, row in enumerate(batch):
            try:
                with connection:
                    connection.execute(INSERT_ROWS, row)
                self.written += 1
            except sqlite3.OperationalError as exc:
                self._keep(batch[position:], exc)
                return
            except (sqlite3.Error, OverflowError) as exc:
                self.lost += 1
                self.error = f"request log refused request {row[0]}: {exc}"

    def _keep(self, batch: list[tuple[Any, ...]], exc: Exception) -> None:
        """Put an unwritten batch back at the front of the queue, within ``max_pending``."""
        self._pending.extendleft(reversed(batch))
        over = len(self._pending) - self.max_pending
        for _ in range(max(over, 0)):
            self._pending.popleft()
        self.lost += max(over, 0)
        self.error = f"request log {self.path} cannot be written ({exc}); {len(self._pending)} rows kept"

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=1.0)
        connection.execute("PRAGMA synchronous=NORMAL")
        while not self._stop.wait(self.flush_seconds):
            self._write(connection)
        self._write(connection)  # what arrived before close()
        connection.close()
