"""Typed readers of polars frames: aggregates come back as plain ints and floats (polars types
a scalar as any Python literal) and rating times as ISO strings for asset metadata."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl


def number(value: object, default: float = 0.0) -> float:
    """A numeric polars aggregate as a float; ``default`` for None (an empty or all-null column)."""
    if value is None:
        return default
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def iso_time(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def time_range(frame: pl.DataFrame) -> tuple[int, int] | None:
    """The first and last ``timestamp`` of a frame (unix seconds); None when it is empty."""
    if frame.is_empty():
        return None
    first, last = frame.select(first=pl.col("timestamp").min(), last=pl.col("timestamp").max()).row(0)
    return int(first), int(last)


def rating_period(frame: pl.DataFrame) -> dict[str, str]:
    """``first_rating`` / ``last_rating`` as ISO times for asset metadata ("" when empty)."""
    first, last = time_range(frame) or (None, None)
    return {"first_rating": iso_time(first) or "", "last_rating": iso_time(last) or ""}
