"""The stream's folders: where batches arrive, where accepted and quarantined ones go.

``incoming/``    batches as delivered (``recsys-simulate`` or any producer writing atomically)
``accepted/``    batches that passed validation: the graph trains on these
``quarantine/``  batches that failed, each beside ``<name>.reason.json`` saying why
``duplicates/``  byte-identical re-deliveries of a batch already registered, with a reason file
``drift/``       one JSON drift report per batch

Files are moved, never deleted, so every delivered byte can be found again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ..sources.formats import LAYOUTS, RATINGS_SCHEMA, read_table
from ..storage import atomic_path

BATCH_SUFFIX = ".csv"
BATCH_COLUMN = "batch"  # names the accepted batch a streamed rating came from (null for history)


def content_hash(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_batch(path: Path) -> pl.DataFrame:
    """A batch file (MovieLens ``ratings.csv`` format) in the normalised ratings schema.

    Raises :class:`~recsys_assets.sources.formats.DataFormatError` naming the file, line and problem.
    """
    frame = read_table(path, LAYOUTS["csv"].ratings)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in RATINGS_SCHEMA.items())


@dataclass(frozen=True)
class StreamFolders:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def accepted(self) -> Path:
        return self.root / "accepted"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def duplicates(self) -> Path:
        return self.root / "duplicates"

    @property
    def drift(self) -> Path:
        return self.root / "drift"

    def pending(self) -> list[Path]:
        """Delivered batch files not yet accepted or quarantined, in order of arrival (so of two
        identical files the first delivered is the batch and the later one the re-delivery)."""
        if not self.incoming.is_dir():
            return []
        files = [p for p in self.incoming.glob(f"*{BATCH_SUFFIX}") if not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def locate(self, name: str) -> Path:
        """The file of batch ``name``, wherever it is now (re-materialising an accepted batch
        reads it from ``accepted/``)."""
        for folder in (self.incoming, self.accepted, self.quarantine):
            candidate = folder / f"{name}{BATCH_SUFFIX}"
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"batch {name!r} is in none of {self.incoming}, {self.accepted}, {self.quarantine}"
        )

    def _move(self, path: Path, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        if path.resolve() != target.resolve():
            os.replace(path, target)
        return target

    def _write_reason(self, folder: Path, name: str, reason: dict) -> Path:
        record = {"batch": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), **reason}
        target = folder / f"{name}.reason.json"
        with atomic_path(target) as temporary:
            temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
        return target

    def accept(self, path: Path) -> Path:
        stale = self.quarantine / f"{path.stem}.reason.json"
        if stale.is_file() and path.parent == self.quarantine:
            # A quarantined batch that now passes (e.g. its movies were added): keep the old reason.
            os.replace(stale, stale.with_suffix(".resolved.json"))
        return self._move(path, self.accepted)

    def quarantine_batch(self, path: Path, reason: dict) -> Path:
        """Move a failed batch into quarantine, the reason file first (so no batch sits there
        unexplained)."""
        self.quarantine.mkdir(parents=True, exist_ok=True)
        self._write_reason(self.quarantine, path.stem, reason)
        return self._move(path, self.quarantine)

    def set_aside_duplicate(self, path: Path, duplicate_of: str) -> Path:
        self.duplicates.mkdir(parents=True, exist_ok=True)
        self._write_reason(self.duplicates, path.stem, {"reason": f"byte-identical to batch {duplicate_of}"})
        return self._move(path, self.duplicates)

    def accepted_names(self) -> list[str]:
        if not self.accepted.is_dir():
            return []
        return sorted(p.stem for p in self.accepted.glob(f"*{BATCH_SUFFIX}"))

    def accepted_ratings(self, names: list[str] | None = None) -> pl.DataFrame:
        """The ratings of the accepted batches (all, or those named), with their batch name."""
        chosen = self.accepted_names() if names is None else names
        frames = [
            read_batch(self.accepted / f"{name}{BATCH_SUFFIX}").with_columns(pl.lit(name).alias(BATCH_COLUMN))
            for name in chosen
        ]
        if not frames:
            return pl.DataFrame(schema={**RATINGS_SCHEMA, BATCH_COLUMN: pl.String})
        return pl.concat(frames)
