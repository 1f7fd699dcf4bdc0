"""Dagster resources: where the ratings come from and where assets are stored."""

import contextlib
import io
import logging
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import overload

import dagster as dg
import mlflow
import polars as pl
from upath import UPath

from recsys_serving.paths import resolve_path
from recsys_serving.promotion import REGISTERED_MODEL, registry_client

from ..settings import SOURCE_OPTIONS, Settings
from ..sources.resolve import ResolvedSource, resolve_options
from ..storage import atomic_path, publish_directory, put_object
from ..streaming.store import StreamFolders


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
    history_cutoff: str | None = None  # YYYY-MM-DD: only ratings before it (the rest is streamed)

    @classmethod
    def from_settings(cls, settings: Settings) -> "DatasetSource":
        paths = {"data_dir", "data_root"}
        return cls.model_validate(
            {
                name: (str(value) if name in paths and value is not None else value)
                for name, value in settings.source_options().items()
            }
        )

    def resolve(self, log: logging.Logger | dg.DagsterLogManager) -> ResolvedSource:
        options = {name: getattr(self, name) for name in SOURCE_OPTIONS}
        resolved = resolve_options(options, self.connect_timeout_seconds, warn=log.warning)
        log.info(f"data source: {resolved.describe()}")
        return resolved


@overload
def _with(path: UPath, suffix: str) -> UPath: ...
@overload
def _with(path: Path, suffix: str) -> Path: ...
@overload
def _with(path: Path | UPath, suffix: str) -> Path | UPath: ...
def _with(path: Path | UPath, suffix: str) -> Path | UPath:
    return path.with_name(path.name + suffix)  # partition keys may contain dots


def _frames(obj: object) -> dict[str, pl.DataFrame] | None:
    """``obj`` when it is a non-empty dict of frames (the splits), stored as one file per frame."""
    if isinstance(obj, dict) and obj and all(isinstance(v, pl.DataFrame) for v in obj.values()):
        return obj
    return None


class AtomicFileIOManager(dg.ConfigurableIOManager):
    """Stores asset values under ``base_dir``, every write atomic (temporary file, then rename).

    A polars frame goes to ``<key>.parquet``, a dict of frames (the splits) to a directory of
    ``<name>.parquet`` files, anything else (models, indexes, manifests) to ``<key>.pickle``.
    A partition is stored under its asset's directory: ``<key>/<partition>.parquet``.

    ``base_dir`` is a local directory (relative paths from the repository root) or an fsspec URL
    (``s3://bucket/prefix``, ``gs://…``, ``file:///…``) handled through UPath; there every object is
    written whole (:func:`~recsys_assets.storage.put_object`), the split files one by one.
    """

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path | UPath:
        root = UPath(self.base_dir) if "://" in self.base_dir else resolve_path(self.base_dir)
        path = root.joinpath(*context.asset_key.path)
        if context.has_asset_partitions:
            return path / context.asset_partition_key
        return path

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        path = self._path(context)
        frames = _frames(obj)
        if isinstance(path, UPath):
            if isinstance(obj, pl.DataFrame):
                put_object(_with(path, ".parquet"), _parquet_bytes(obj))
            elif frames:
                for name, frame in frames.items():
                    put_object(path / f"{name}.parquet", _parquet_bytes(frame))
            else:
                put_object(_with(path, ".pickle"), pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        elif isinstance(obj, pl.DataFrame):
            with atomic_path(_with(path, ".parquet")) as temporary:
                obj.write_parquet(temporary)
        elif frames:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
            try:
                for name, frame in frames.items():
                    frame.write_parquet(staging / f"{name}.parquet")
                publish_directory(staging, path, replace=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            with atomic_path(_with(path, ".pickle")) as temporary:
                temporary.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def load_input(self, context: dg.InputContext) -> object:
        path = self._path(context)
        if (stored := _read_stored(path)) is not None:
            return stored
        raise FileNotFoundError(
            f"{context.asset_key.to_user_string()} has not been materialised yet (nothing at {path}.*)"
        )


def _read_stored(path: Path | UPath) -> object | None:
    """What :meth:`AtomicFileIOManager.handle_output` stored at ``path``; None when nothing is."""

    def frame(file: Path | UPath) -> pl.DataFrame:
        return pl.read_parquet(file.read_bytes() if isinstance(file, UPath) else file)

    if _with(path, ".parquet").is_file():
        return frame(_with(path, ".parquet"))
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.name.endswith(".parquet")), key=lambda p: p.name)
        return {p.name.removesuffix(".parquet"): frame(p) for p in files}
    if _with(path, ".pickle").is_file():
        return pickle.loads(_with(path, ".pickle").read_bytes())
    return None


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


class MLflowTracking(dg.ConfigurableResource):
    """MLflow tracking and registry through an explicit client.

    No fluent ``mlflow.start_run`` state: every run is created and terminated explicitly (FAILED on
    an exception), so however a Dagster run is launched no MLflow run stays RUNNING or leaks into
    the next one. (dagster-mlflow's resource only ends runs with a job hook that ``materialize`` and
    automation-launched runs do not have.)
    """

    tracking_uri: str
    artifact_root: str | None = None  # where new experiments keep artifacts (e.g. s3://bucket/mlflow)
    experiment: str = "movielens-recsys"
    registered_model: str = REGISTERED_MODEL

    def client(self) -> mlflow.MlflowClient:
        return registry_client(self.tracking_uri)

    def _artifact_location(self) -> str | None:
        if self.artifact_root:
            return self.artifact_root
        # MLflow's default artifact root is ./mlruns in the current directory: pin it beside a
        # local SQLite store instead. Remote servers choose their own.
        if self.tracking_uri.startswith("sqlite:///"):
            database = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return (database.parent / "mlartifacts").as_uri()
        return None

    def experiment_id(self) -> str:
        client = self.client()
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(self.experiment, artifact_location=self._artifact_location())

    def register_bundle(self, source: str, run_id: str | None, tags: dict[str, str]) -> str:
        """A new version of the registered model for a bundle (created on first use); returns it."""
        client, name = self.client(), self.registered_model
        if client.search_registered_models(filter_string=f"name = '{name}'") == []:
            client.create_registered_model(
                name, description="MovieLens recommender bundles (ALS, EASE or item-kNN, as validated)"
            )
        return str(client.create_model_version(name, source=source, run_id=run_id, tags=tags).version)

    @contextlib.contextmanager
    def run(self, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> Iterator[str]:
        client = self.client()
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = client.create_run(self.experiment_id(), run_name=name, tags=tags)
        try:
            yield run.info.run_id
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")


class BundleStore(dg.ConfigurableResource):
    """Where production bundles are written (``RECSYS_BUNDLE_ROOT``)."""

    root: str

    def path(self) -> Path:
        return resolve_path(self.root)


class StreamStore(dg.ConfigurableResource):
    """The stream's folders (``$RECSYS_DATA_ROOT/stream``): incoming, accepted, quarantine."""

    root: str

    def folders(self) -> StreamFolders:
        return StreamFolders(resolve_path(self.root))


class RequestLogStore(dg.ConfigurableResource):
    """The API's request log (``RECSYS_REQUEST_LOG``, default ``$RECSYS_DATA_ROOT/request_log.sqlite``)."""

    path: str

    def read(self, arrived: tuple[float, float] | None = None) -> pl.DataFrame:
        """Every logged request, or those that arrived in ``[start, end)`` (unix seconds)."""
        from ..online.replay import read_request_log

        return read_request_log(resolve_path(self.path), arrived)


def resources_from_settings(settings: Settings) -> dict:
    """One set of resources for both code locations, so they read and write the same places."""
    return {
        "source": DatasetSource.from_settings(settings),
        "io_manager": AtomicFileIOManager(base_dir=settings.asset_root),
        "mlflow_tracking": MLflowTracking(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        ),
        "bundle_store": BundleStore(root=str(settings.bundle_root)),
        "stream": StreamStore(root=str(settings.stream_root)),
        "request_log": RequestLogStore(path=str(settings.request_log_path)),
    }
