"""Where the project lives and where things go by default: the one source both packages use.

Relative paths resolve against the project root, never against the current directory. The
serving package owns this (it imports nothing from the pipeline); ``recsys_assets.settings``
builds on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def project_root(environ: Mapping[str, str] | None = None) -> Path:
    """The repository root: ``RECSYS_PROJECT_ROOT`` if set, else the checkout holding this package."""
    environ = os.environ if environ is None else environ
    if environ.get("RECSYS_PROJECT_ROOT"):
        return Path(environ["RECSYS_PROJECT_ROOT"]).expanduser().resolve()
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT
    # Installed as a wheel (no checkout around it): the working directory is the only anchor left.
    return Path.cwd().resolve()


def resolve_path(value: str | os.PathLike[str], root: Path | None = None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (root or project_root()) / path
    return path.resolve()


def default_tracking_uri(root: Path | None = None) -> str:
    """MLflow's store when ``RECSYS_MLFLOW_TRACKING_URI`` is unset: SQLite under dagster_home/."""
    return f"sqlite:///{(root or project_root()) / 'dagster_home' / 'mlflow.db'}"
