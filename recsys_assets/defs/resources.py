"""Dagster resources: where the ratings come from and where assets are stored."""

import logging
import shutil
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from ..settings import Settings, resolve_path
from ..sources.resolve import ResolvedSource, resolve_source
from ..sources.synthetic import SyntheticConfig
from ..storage import atomic_path, publish_directory


class DatasetSource(dg.ConfigurableResource):
    """Which ratings to read: ``auto``, ``synthetic`` or a MovieLens release name.

    Defaults come from ``RECSYS_*`` environment variables (see :class:`Settings`).
    """

    dataset: str = "auto"
    data_dir: str | None = None
    data_root: str = "data"
    allow_download: bool = True
    movielens_url: str | None = None
    connect_timeout_seconds: float = 5.0
    synthetic_users: int = 1_000
    synthetic_movies: int = 3_000
    synthetic_ratings: int = 100_000
    synthetic_seed: int = 42

    @classmethod
    def from_settings(cls, settings: Settings) -> "DatasetSource":
        return cls(
            dataset=settings.dataset,
            data_dir=str(settings.data_dir) if settings.data_dir else None,
            data_root=str(settings.data_root),
            allow_download=settings.allow_download,
            movielens_url=settings.movielens_url,
            synthetic_users=settings.synthetic_users,
            synthetic_movies=settings.synthetic_movies,
            synthetic_ratings=settings.synthetic_ratings,
            synthetic_seed=settings.synthetic_seed,
        )

    def resolve(self, log: logging.Logger | dg.DagsterLogManager) -> ResolvedSource:
        resolved = resolve_source(
            self.dataset,
            raw_dir=resolve_path(self.data_root) / "raw",
            data_dir=resolve_path(self.data_dir) if self.data_dir else None,
            synthetic=SyntheticConfig(
                n_users=self.synthetic_users,
                n_movies=self.synthetic_movies,
                n_ratings=self.synthetic_ratings,
                seed=self.synthetic_seed,
            ),
            allow_download=self.allow_download,
            base_url=self.movielens_url,
            connect_timeout=self.connect_timeout_seconds,
            warn=log.warning,
        )
        log.info(f"data source: {resolved.describe()}")
        return resolved


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores polars frames as Parquet under ``base_dir``, written atomically.

    A frame goes to ``<key>.parquet``; a dict of frames (e.g. the splits) to ``<key>/<name>.parquet``.
    """

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return resolve_path(self.base_dir).joinpath(*context.asset_key.path)

    def handle_output(
        self, context: dg.OutputContext, obj: pl.DataFrame | dict[str, pl.DataFrame]
    ) -> None:
        path = self._path(context)
        if isinstance(obj, pl.DataFrame):
            with atomic_path(path.with_suffix(".parquet")) as temporary:
                obj.write_parquet(temporary)
        elif isinstance(obj, dict) and all(isinstance(v, pl.DataFrame) for v in obj.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
            try:
                for name, frame in obj.items():
                    frame.write_parquet(staging / f"{name}.parquet")
                publish_directory(staging, path, replace=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: ParquetIOManager stores polars DataFrames "
                f"or dicts of them, got {type(obj).__name__}"
            )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict[str, pl.DataFrame]:
        path = self._path(context)
        if path.with_suffix(".parquet").is_file():
            return pl.read_parquet(path.with_suffix(".parquet"))
        if path.is_dir():
            return {p.stem: pl.read_parquet(p) for p in sorted(path.glob("*.parquet"))}
        raise FileNotFoundError(
            f"{context.asset_key.to_user_string()} has not been materialised yet (no {path}.parquet)"
        )
