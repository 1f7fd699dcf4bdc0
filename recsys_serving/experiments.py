"""A/B experiments: bundles served side by side, users split between them by a salted hash.

The running experiment is ``<bundle_root>/EXPERIMENT.json``, written atomically (by the admin
routes, or by hand), so every replica serves the same split, a restart changes nothing, and the
service picks a change up on its next poll. Every start and stop is appended to
``<bundle_root>/experiments.jsonl``. A user is assigned by ``sha256(salt:user_id)``; a cold-start
request, which has no user, by its request key (``X-Request-Key``, else the client address). An
arm names a bundle version in the bundle root, or ``champion`` for whatever ``CURRENT`` names.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

EXPERIMENT_FILE = "EXPERIMENT.json"
EXPERIMENT_HISTORY = "experiments.jsonl"
CHAMPION_ARM = "champion"


class Arm(BaseModel):
    name: str = Field(..., min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    bundle: str = Field(
        ...,
        min_length=1,
        max_length=120,
        pattern=r"^[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$",
        description="a bundle version in the bundle root, or `champion`",
    )
    weight: float = Field(..., gt=0)

    @field_validator("bundle")
    @classmethod
    def _plain_version(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", "..") or not value.isprintable():
            raise ValueError(f"not a bundle version: {value[:80]!r}")
        return value


class Experiment(BaseModel):
    id: str = Field(..., min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.:-]+$")
    salt: str = Field("", max_length=80, description="default: the experiment id")
    arms: list[Arm] = Field(..., min_length=2, max_length=8)
    epsilon: float = Field(0.0, ge=0, le=1, description="share of slots filled at random (exploration)")
    started_at: str | None = None

    @model_validator(mode="after")
    def _distinct_arms(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must differ: {names}")
        if not self.salt:
            self.salt = self.id
        return self

    @property
    def weights(self) -> dict[str, float]:
        total = sum(arm.weight for arm in self.arms)
        return {arm.name: arm.weight / total for arm in self.arms}

    def assign(self, key: object) -> Arm:
        """The arm of ``key`` (a user id or a request key): deterministic, uniform over the
        weights, and independent between experiments with different salts."""
        point = unit_hash(self.salt, key) * sum(arm.weight for arm in self.arms)
        cumulative = 0.0
        for arm in self.arms:
            cumulative += arm.weight
            if point < cumulative:
                return arm
        return self.arms[-1]


def unit_hash(salt: str, key: object) -> float:
    """A point in [0, 1) from ``salt`` and ``key``: the first 8 bytes of sha256 over 2^64."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def read_experiment(root: Path) -> Experiment | None:
    """The running experiment, None when there is none; a garbled file is an error, never guessed."""
    path = Path(root) / EXPERIMENT_FILE
    if not path.is_file():
        return None
    try:
        return Experiment.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path} is not a valid experiment: {exc}") from None


def _record(root: Path, entry: dict[str, Any]) -> None:
    with open(Path(root) / EXPERIMENT_HISTORY, "a") as history:
        history.write(json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}) + "\n")


def start_experiment(root: Path, experiment: Experiment) -> Experiment:
    """Write ``experiment`` as the running one (atomically) and record the start."""
    root = Path(root)
    for arm in experiment.arms:
        if arm.bundle != CHAMPION_ARM and not (root / arm.bundle / "manifest.json").is_file():
            raise FileNotFoundError(f"arm {arm.name}: {root / arm.bundle} is not a bundle")
    started = experiment.model_copy(
        update={"started_at": experiment.started_at or datetime.now(UTC).isoformat(timespec="seconds")}
    )
    fd, temporary = tempfile.mkstemp(prefix=".experiment-", dir=root)
    with os.fdopen(fd, "w") as handle:
        handle.write(started.model_dump_json(indent=2) + "\n")
    os.replace(temporary, root / EXPERIMENT_FILE)
    _record(root, {"action": "start", "experiment": started.model_dump()})
    return started


def stop_experiment(root: Path, reason: str) -> Experiment | None:
    """Stop the running experiment (every user back on the champion) and record why."""
    root = Path(root)
    running = read_experiment(root)
    if running is None:
        return None
    (root / EXPERIMENT_FILE).unlink()
    _record(root, {"action": "stop", "id": running.id, "reason": reason})
    return running
