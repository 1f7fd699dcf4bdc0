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
from .experiments import CHAMPION_ARM, Arm, Experiment, read_experiment
from .metrics import Metrics
from .promotion import promoted_path, registry_client
from .settings import ServingSettings

log = logging.getLogger("recsys_serving")


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _signature(path: Path) -> tuple[int, int] | None:
    """What identifies one state of a bundle directory: a refused bundle is tried again only
    when its manifest changes (or appears)."""
    return _file_signature(path / MANIFEST)


class Split:
    """A running experiment and the engine of each arm (None: the champion, whatever it is when
    the request arrives). Replaced as a whole, like the engine, so a request sees one split."""

    def __init__(self, experiment: Experiment, engines: dict[str, Engine | None]):
        self.experiment, self.engines = experiment, engines

    def route(self, key: object, champion: Engine) -> tuple[Engine, Arm]:
        arm = self.experiment.assign(key)
        return self.engines[arm.name] or champion, arm


class BundleManager:
    """Holds the served engine and swaps in newer promoted bundles; holds the running experiment's
    arms beside it."""

    def __init__(self, settings: ServingSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.engine: Engine | None = None
        self.loaded_at: str | None = None
        self.source: str | None = None
        self.error: str | None = None
        self.split: Split | None = None
        self.experiment_error: str | None = None
        self._experiment_signature: tuple[int, int] | None = None
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
        """Load the promoted bundle if it is not the one served, and the running experiment's arms;
        True when the served bundle was swapped."""
        with self._lock:
            swapped = self._check_bundle(force)
            self._check_experiment(force)
            return swapped

    def _check_experiment(self, force: bool) -> None:
        """Load the arms of ``EXPERIMENT.json`` when it changed; a broken experiment (a garbled
        file, an arm that does not load) is reported and leaves every user on the champion."""
        path = self.settings.bundle_path / "EXPERIMENT.json"
        signature = _file_signature(path)
        if signature == self._experiment_signature and not force:
            return
        self._experiment_signature = signature
        try:
            experiment = read_experiment(self.settings.bundle_path)
            if experiment is None:
                self.split, self.experiment_error = None, None
                return
            loaded = self.split.engines if self.split else {}
            known = {e.version: e for e in [self.engine, *loaded.values()] if e is not None}
            engines: dict[str, Engine | None] = {}
            for arm in experiment.arms:
                if arm.bundle == CHAMPION_ARM:
                    engines[arm.name] = None
                else:
                    engines[arm.name] = known.get(arm.bundle) or Engine(
                        load_bundle(self.settings.bundle_path / arm.bundle),
                        self.settings.precomputed_lists,
                        self.settings.cold_slots,
                    )
        except Exception as exc:
            self.split = None
            self.experiment_error = f"experiment not served (every user gets the champion): {exc}"
            log.error(self.experiment_error)
            return
        self.split, self.experiment_error = Split(experiment, engines), None
        log.info(f"experiment {experiment.id}: arms {experiment.weights}")

    def _check_bundle(self, force: bool) -> bool:
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
