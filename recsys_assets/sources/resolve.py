"""Decide which ratings the pipeline reads: a local copy, a cached or fresh download, or synthetic data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from recsys_serving.paths import resolve_path

from .formats import detect_layout
from .movielens import DEFAULT_BASE_URL, RELEASES, DownloadError, download_release
from .synthetic import SyntheticConfig, write_dataset

log = logging.getLogger(__name__)
AUTO_RELEASE = "ml-latest-small"


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "movielens" or "synthetic"
    name: str  # release name, or synthetic-<fingerprint>
    directory: Path
    origin: str  # how we got it, for people reading the metadata
    warnings: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        return f"{self.name} ({self.origin})"


def _release_name(directory: Path) -> str:
    name = directory.name.lower()
    for release in RELEASES.values():
        if name in (release.name, release.folder.lower()):
            return release.name
    return f"movielens:{directory.name}"


def _local(directory: Path) -> ResolvedSource:
    detect_layout(directory)  # fails early, naming what it expected, when the folder is wrong
    return ResolvedSource("movielens", _release_name(directory), directory, f"local copy at {directory}")


def _synthetic(config: SyntheticConfig, raw_dir: Path, warnings: tuple[str, ...]) -> ResolvedSource:
    directory = write_dataset(config, raw_dir / config.dirname)
    origin = (
        f"generated: {config.n_ratings:,} ratings, {config.n_users:,} users, "
        f"{config.n_movies:,} movies, seed {config.seed}"
    )
    return ResolvedSource("synthetic", config.dirname, directory, origin, warnings)


def resolve_source(
    dataset: str,
    raw_dir: Path,
    data_dir: Path | None = None,
    synthetic: SyntheticConfig | None = None,
    allow_download: bool = True,
    base_url: str | None = None,
    connect_timeout: float = 5.0,
    warn: Callable[[str], None] = log.warning,
) -> ResolvedSource:
    """Resolve ``dataset`` (``auto``, ``synthetic`` or a release name) to files on disk.

    ``auto`` prefers a local copy (``data_dir``), then any release already cached in ``raw_dir``,
    then a download of ml-latest-small, and falls back to synthetic data with a warning.
    """
    raw_dir = Path(raw_dir)
    synthetic = synthetic or SyntheticConfig()
    download = partial(
        download_release, connect_timeout=connect_timeout, base_url=base_url or DEFAULT_BASE_URL
    )

    if dataset == "synthetic":
        return _synthetic(synthetic, raw_dir, ())
    if data_dir is not None:
        return _local(Path(data_dir))
    if dataset in RELEASES:
        cached = raw_dir / dataset
        if cached.is_dir():
            return ResolvedSource("movielens", dataset, cached, f"cached download in {cached}")
        if not allow_download:
            raise DownloadError(
                f"{dataset} is not in {raw_dir} and downloads are disabled; set RECSYS_DATA_DIR "
                "to a local copy or allow downloads"
            )
        directory = download(dataset, raw_dir)
        return ResolvedSource("movielens", dataset, directory, "downloaded from GroupLens")
    if dataset != "auto":
        raise ValueError(f"unknown dataset {dataset!r}: use auto, synthetic or one of {list(RELEASES)}")

    for name in (AUTO_RELEASE, *RELEASES):
        if (raw_dir / name).is_dir():
            return ResolvedSource("movielens", name, raw_dir / name, f"cached download in {raw_dir / name}")
    reason = "downloads are disabled"
    if allow_download:
        try:
            directory = download(AUTO_RELEASE, raw_dir)
            return ResolvedSource("movielens", AUTO_RELEASE, directory, "downloaded from GroupLens")
        except DownloadError as exc:
            reason = str(exc)
    message = (
        f"No MovieLens data available ({reason}). Falling back to SYNTHETIC data: results are "
        "not MovieLens results. Set RECSYS_DATA_DIR to a local copy to use real data."
    )
    warn(message)
    return _synthetic(synthetic, raw_dir, (message,))


def resolve_options(
    options: dict, connect_timeout: float = 5.0, warn: Callable[[str], None] = log.warning
) -> ResolvedSource:
    """Resolve from the source options (``SOURCE_OPTIONS``) of :class:`Settings` or the resource."""
    data_dir = options.get("data_dir")
    return resolve_source(
        options["dataset"],
        raw_dir=resolve_path(options["data_root"]) / "raw",
        data_dir=resolve_path(data_dir) if data_dir else None,
        synthetic=SyntheticConfig(
            n_users=options["synthetic_users"],
            n_movies=options["synthetic_movies"],
            n_ratings=options["synthetic_ratings"],
            seed=options["synthetic_seed"],
        ),
        allow_download=options["allow_download"],
        base_url=options["movielens_url"],
        connect_timeout=connect_timeout,
        warn=warn,
    )
