"""The request log: every recommendation request, in SQLite (WAL), written off the request path.

Requests put records on a queue; one thread writes them in batches. ``close()`` drains the queue,
so a graceful shutdown loses nothing. The table is the input for later KPI and replay evaluation.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
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
    def __init__(self, path: Path, batch_size: int = 500, flush_seconds: float = 0.2):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self._queue: queue.Queue[RequestRecord | None] = queue.Queue()
        self.written = 0
        self.error: str | None = None
        with sqlite3.connect(self.path) as connection:  # fail at startup, not in the writer
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def log(self, record: RequestRecord) -> None:
        self._queue.put_nowait(record)

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA synchronous=NORMAL")
        done = False
        while not done:
            batch: list[RequestRecord] = []
            try:
                first = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                continue
            if first is None:
                done = True
            else:
                batch.append(first)
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            if batch:
                try:
                    with connection:
                        connection.executemany(
                            "INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            [r.row() for r in batch],
                        )
                    self.written += len(batch)
                except sqlite3.Error as exc:  # keep serving; the error shows in /ready
                    self.error = f"request log write failed: {exc}"
        connection.close()
