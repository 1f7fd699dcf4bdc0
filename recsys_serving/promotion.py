"""Which bundle is served: a pointer file beside the bundles, switched atomically.

``<bundle_root>/CURRENT`` holds the promoted version's directory name; every switch is appended
to ``<bundle_root>/promotions.jsonl`` so the promotion history survives.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

POINTER = "CURRENT"
HISTORY = "promotions.jsonl"
REGISTERED_MODEL = "movielens-als"  # the MLflow registered model every bundle is a version of
CHAMPION = "champion"  # the MLflow alias that follows CURRENT


def registry_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client on one store for both tracking and the registry (mlflow is imported only
    here and only when called: the API needs it in alias mode alone)."""
    try:
        import mlflow
    except ImportError:
        raise RuntimeError(
            "following an MLflow alias needs MLflow: pip install 'movielens-recsys[alias]' "
            "(the api image: --build-arg SERVING_EXTRAS=alias)"
        ) from None

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def promoted_version(root: Path) -> str | None:
    """The version ``CURRENT`` names, None when there is no pointer; a pointer that does not hold a
    plain directory name (garbled, or a path out of the bundle root) is an error, never followed."""
    pointer = Path(root) / POINTER
    if not pointer.is_file():
        return None
    version = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    if not version:
        return None
    if not version.isprintable() or "/" in version or "\\" in version or version in (".", ".."):
        raise ValueError(f"{pointer} does not hold a bundle version: {version[:80]!r}")
    return version


def promoted_path(root: Path) -> Path | None:
    version = promoted_version(root)
    return Path(root) / version if version else None


def promote(root: Path, version: str, reason: str, **details: object) -> None:
    """Point ``CURRENT`` at ``version`` (which must exist) and record the switch."""
    root = Path(root)
    if not (root / version / "manifest.json").is_file():
        raise FileNotFoundError(f"cannot promote {version}: {root / version} is not a bundle")
    previous = promoted_version(root)
    fd, temporary = tempfile.mkstemp(prefix=f".{POINTER}-", dir=root)
    with os.fdopen(fd, "w") as handle:
        handle.write(version + "\n")
    os.replace(temporary, root / POINTER)
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": version,
        "previous": previous,
        "reason": reason,
        **details,
    }
    with open(root / HISTORY, "a") as history:
        history.write(json.dumps(record, default=str) + "\n")
