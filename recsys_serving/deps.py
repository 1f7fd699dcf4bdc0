"""What routes share: the service state of the app, the served engine, admin authentication."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import Header, HTTPException, Request

from .engine import Engine
from .manager import BundleManager
from .metrics import Metrics
from .ratelimit import RateLimiter
from .request_log import RequestLog
from .settings import ServingSettings


@dataclass
class Service:
    settings: ServingSettings
    metrics: Metrics
    manager: BundleManager
    limiter: RateLimiter
    request_log: RequestLog | None = None
    # Exploration's draws (experiments with epsilon > 0).
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def serving_engine(service: Service) -> Engine:
    """The engine to answer with, taken once per request (see :mod:`.manager`); 503 without one."""
    current = service.manager.engine
    if current is None:
        raise HTTPException(503, detail=service.manager.error or service.manager.no_bundle_message())
    return current


@dataclass(frozen=True)
class Assignment:
    """Where a request went inside a running A/B experiment."""

    experiment_id: str
    arm: str
    epsilon: float  # the experiment's exploration rate

    def logged(self) -> dict[str, object]:
        return {"experiment_id": self.experiment_id, "arm": self.arm, "epsilon": self.epsilon}

    def response(self) -> dict[str, object]:
        return {"experiment": {"id": self.experiment_id, "arm": self.arm}}


def split_engine(service: Service, key: object) -> tuple[Engine, Assignment | None]:
    """The engine for ``key`` (a user id, or a cold-start request key) and, inside a running
    experiment, where the request went (the fields a response and its log row carry)."""
    champion = serving_engine(service)
    split = service.manager.split
    if split is None:
        return champion, None
    engine, arm = split.route(key, champion)
    return engine, Assignment(split.experiment.id, arm.name, split.experiment.epsilon)


def current_engine(request: Request) -> Engine:
    return serving_engine(service_of(request))


def require_admin(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    expected = service_of(request).settings.admin_api_key
    if expected and not (x_api_key and secrets.compare_digest(x_api_key, expected)):
        raise HTTPException(401, detail="missing or wrong X-API-Key")
