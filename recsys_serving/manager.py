"""The served bundle: found through the ``CURRENT`` pointer or an MLflow alias, swapped atomically.

Each request takes the engine reference once, so in-flight requests finish on the bundle they
started with and no response mixes two bundles. Whatever goes wrong on the way to a newer bundle
(a dangling or garbled pointer, a corrupted bundle, the registry down, the served directory
removed) leaves the loaded bundle serving, is reported in ``error`` (``/ready``, ``/metrics``)
and clears by itself once the cause is gone.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from .bundle import MANIFEST, load_bundle
from .engine import Engine
from .metrics import Metrics
from .promotion import promoted_path, registry_client
from .settings import ServingSettings

log = logging.getLogger("recsys_serving")


def _signature(path: Path) -> tuple[int, int] | None:
    """What identifies one state of a bundle directory: a refused bundle is tried again only
    when its manifest changes (or appears)."""
    try:
        stat = (path / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class BundleManager:
    """Holds the served engine and swaps in newer promoted bundles."""

    def __init__(self, settings: ServingSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.engine: Engine | None = None
        self.loaded_at: str | None = None
        self.source: str | None = None
        self.error: str | None = None
        self._refused: tuple[Path, tuple[int, int] | None] | None = None
        self._lock = threading.Lock()

    def no_bundle_message(self) -> str:
        where = (
            f"MLflow alias '{self.settings.model_alias}' of {self.settings.registered_model}"
            if self.settings.model_alias
            else f"{self.settings.bundle_path}/CURRENT"
        )
        return (
            f"No promoted bundle ({where} does not name one). Build and promote one with `make demo` "
            "or `dagster asset materialize -m recsys_assets.definitions --select '*'`; this service "
            f"picks it up within {self.settings.poll_seconds:g}s, or at once with POST /admin/reload."
        )

    def _locate(self) -> tuple[Path | None, str]:
        if not self.settings.model_alias:
            return promoted_path(self.settings.bundle_path), f"pointer {self.settings.bundle_path}/CURRENT"
        client = registry_client(self.settings.tracking_uri)
        version = client.get_model_version_by_alias(self.settings.registered_model, self.settings.model_alias)
        path = version.tags.get("bundle_path")
        if not path:
            raise RuntimeError(f"model version {version.version} has no bundle_path tag")
        return (
            Path(path),
            f"MLflow {self.settings.registered_model}@{self.settings.model_alias} (v{version.version})",
        )

    def _report(self, error: str | None) -> None:
        if error and error != self.error:
            log.error(error)
        self.error = error
        self.metrics.bundle_error.set(1 if error else 0)

    def check(self, force: bool = False) -> bool:
        """Load the promoted bundle if it is not the one served; True when a swap happened."""
        with self._lock:
            try:
                path, source = self._locate()
            except Exception as exc:  # registry unreachable, alias missing, pointer unreadable
                self._report(f"cannot resolve the promoted bundle: {exc}")
                return False
            if path is None:
                self._report(None)
                return False
            current = self.engine.bundle.path if self.engine else None
            if current is not None and current.resolve() == path.resolve():
                gone = not path.is_dir()
                self._report(
                    f"the served bundle's directory {path} is gone; still serving it from memory"
                    if gone
                    else None
                )
                return False
            signature = _signature(path)
            if self._refused == (path, signature) and not force:
                return False
            try:
                engine = Engine(load_bundle(path), self.settings.precomputed_lists, self.settings.cold_slots)
            except Exception as exc:
                self._refused = (path, signature)
                self.metrics.load_failures.inc()
                serving = f"still serving {self.engine.version}" if self.engine else "nothing is served"
                self._report(f"bundle {path.name} refused: {exc}; {serving}")
                return False
            previous, self.engine = self.engine, engine  # the swap: one reference assignment
            if previous is not None:
                self.metrics.bundle.remove(previous.version)
            self.metrics.bundle.labels(engine.version).set(1)
            self.metrics.swaps.inc()
            self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
            self.source, self._refused = source, None
            self._report(None)
            log.info(f"serving bundle {engine.version} from {source}")
            return True
