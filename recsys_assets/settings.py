"""Project settings read from ``RECSYS_*`` environment variables.

Pure Python on purpose. The paths and defaults both packages share live in
:mod:`recsys_serving.paths` (the serving package imports nothing from here). Relative paths
resolve against the project root, never against the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from recsys_serving.paths import default_tracking_uri, project_root, resolve_path


def _location(value: str, root: Path) -> str:
    """A path (resolved against ``root``) or an fsspec URL (kept as it is); "" when unset."""
    value = value.strip()
    if not value or "://" in value:
        return value
    return str(resolve_path(value, root))


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (use true or false)")


def _integer(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _day(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a date (YYYY-MM-DD)") from None
    return value


DATASET_CHOICES = (
    "auto",
    "synthetic",
    "ml-latest-small",
    "ml-latest",
    "ml-32m",
    "ml-25m",
    "ml-20m",
    "ml-10m",
    "ml-1m",
    "ml-100k",
)


# The settings that say where ratings come from: shared by the Dagster resource and the CLIs.
SOURCE_OPTIONS = (
    "dataset",
    "data_dir",
    "data_root",
    "allow_download",
    "movielens_url",
    "synthetic_users",
    "synthetic_movies",
    "synthetic_ratings",
    "synthetic_seed",
    "history_cutoff",
)


@dataclass(frozen=True)
class Settings:
    dataset: str
    data_dir: Path | None
    data_root: Path
    bundle_root: Path
    mlflow_tracking_uri: str
    asset_root: str = ""  # the IO manager's base: a directory or an fsspec URL (s3://bucket/prefix)
    mlflow_artifact_root: str | None = None  # default: beside a SQLite store, or the server's choice
    allow_download: bool = True
    movielens_url: str | None = None
    synthetic_users: int = 1_000
    synthetic_movies: int = 3_000
    synthetic_ratings: int = 100_000
    synthetic_seed: int = 42
    history_cutoff: str | None = None  # YYYY-MM-DD: train on ratings before it, stream the rest
    request_log: Path | None = None  # the API's request log (default: <data_root>/request_log.sqlite)

    @property
    def stream_root(self) -> Path:
        return self.data_root / "stream"

    @property
    def request_log_path(self) -> Path:
        return self.request_log or self.data_root / "request_log.sqlite"

    def source_options(self) -> dict:
        return {name: getattr(self, name) for name in SOURCE_OPTIONS}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        root = project_root(environ)
        dataset = environ.get("RECSYS_DATASET", "auto").strip() or "auto"
        if dataset not in DATASET_CHOICES:
            raise ValueError(
                f"RECSYS_DATASET={dataset!r} is not a known dataset; "
                f"choose one of {', '.join(DATASET_CHOICES)}"
            )
        data_dir = environ.get("RECSYS_DATA_DIR", "").strip()
        data_root = resolve_path(environ.get("RECSYS_DATA_ROOT", "data"), root)
        bundle_root = environ.get("RECSYS_BUNDLE_ROOT", "").strip()
        tracking_uri = environ.get("RECSYS_MLFLOW_TRACKING_URI", "").strip()
        tracking_uri = tracking_uri or default_tracking_uri(root)
        return cls(
            allow_download=_flag(environ, "RECSYS_ALLOW_DOWNLOAD", True),
            movielens_url=environ.get("RECSYS_MOVIELENS_URL") or None,
            synthetic_users=_integer(environ, "RECSYS_SYNTHETIC_USERS", cls.synthetic_users),
            synthetic_movies=_integer(environ, "RECSYS_SYNTHETIC_MOVIES", cls.synthetic_movies),
            synthetic_ratings=_integer(environ, "RECSYS_SYNTHETIC_RATINGS", cls.synthetic_ratings),
            synthetic_seed=_integer(environ, "RECSYS_SYNTHETIC_SEED", cls.synthetic_seed),
            history_cutoff=_day(environ, "RECSYS_HISTORY_CUTOFF"),
            dataset=dataset,
            data_dir=resolve_path(data_dir, root) if data_dir else None,
            data_root=data_root,
            bundle_root=resolve_path(bundle_root, root) if bundle_root else data_root / "bundles",
            mlflow_tracking_uri=tracking_uri,
            mlflow_artifact_root=environ.get("RECSYS_MLFLOW_ARTIFACT_ROOT", "").strip() or None,
            asset_root=_location(environ.get("RECSYS_ASSET_ROOT", ""), root) or str(data_root / "assets"),
            request_log=resolve_path(log, root)
            if (log := environ.get("RECSYS_REQUEST_LOG", "").strip())
            else None,
        )
