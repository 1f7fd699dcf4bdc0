"""The request log: every recommendation request, in SQLite (WAL), written off the request path.

Requests put records on a queue; one thread writes them in batches. ``close()`` drains the queue,
so a graceful shutdown loses nothing. The table is the input for later KPI and replay evaluation.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,               -- unix time the request arrived
    route TEXT NOT NULL,            -- route template, e.g. /users/{user_id}/recommendations
    user_id INTEGER,                -- null for cold-start requests
    cold_start INTEGER NOT NULL,    -- 1 when the user was folded in from liked movies
    strategy TEXT,                  -- als | fold_in | popular_fallback
    k INTEGER,
    items TEXT,                     -- JSON [[movieId, rank, score], ...]
    bundle_version TEXT,
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    ts: float
    route: str
    user_id: int | None
    cold_start: bool
    strategy: str | None
    k: int | None
    items: list[tuple[int, int, float]] | None
    bundle_version: str | None
    latency_ms: float
    status: int

    def row(self) -> tuple:
        values = list(astuple(self))
        values[4] = int(self.cold_start)
        values[7] = None if self.items is None else json.dumps(self.items)
        return tuple(values)


class RequestLog:
    def __init__(self, path: Path, batch_size: int = 2000, flush_seconds: float = 0.25):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self._queue: queue.Queue[tuple | None] = queue.Queue()
        self.written = 0
        self.error: str | None = None
        with sqlite3.connect(self.path) as connection:  # fail at startup, not in the writer
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def log(self, record: RequestRecord) -> None:
        # The row is built here (microseconds) so the writer thread holds the GIL only briefly:
        # converting thousands of records there stalled the event loop.
        self._queue.put_nowait(record.row())

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> tuple[list[tuple], bool]:
        """Wait for a record, then gather more for up to ``flush_seconds``: one transaction per
        batch, not per request (per-request commits cost more CPU than serving the request)."""
        batch: list[tuple] = []
        try:
            first = self._queue.get(timeout=self.flush_seconds)
        except queue.Empty:
            return batch, False
        if first is None:
            return batch, True
        batch.append(first)
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA synchronous=NORMAL")
        done = False
        while not done:
            batch, done = self._collect()
            if not batch:
                continue
            try:
                with connection:
                    connection.executemany(
                        "INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        batch,
                    )
                self.written += len(batch)
            except sqlite3.Error as exc:  # keep serving; the error shows in /ready
                self.error = f"request log write failed: {exc}"
        connection.close()
