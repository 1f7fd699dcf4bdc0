"""The recommendation API: ``uvicorn recsys_serving.main:app``.

``create_app`` only assembles: the bundle manager (:mod:`.manager`) holds the served engine and
swaps in newer promoted bundles, the middleware (:mod:`.middleware`) limits, counts and logs
every request, and the routers (:mod:`.routers`) answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import BaseRoute

from .deps import Service
from .engine import compile_kernels, limit_threads
from .manager import BundleManager
from .metrics import Metrics
from .middleware import ServiceMiddleware
from .ratelimit import RateLimiter
from .request_log import RequestLog
from .routers import movies, ops, recommendations
from .schemas import ErrorMessage
from .settings import ServingSettings

log = logging.getLogger("recsys_serving")
PROBES = ("/health", "/ready")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    settings = service.settings
    limit_threads()
    compile_kernels()
    await asyncio.to_thread(service.manager.check)
    if service.manager.engine is None:
        log.warning(service.manager.error or service.manager.no_bundle_message())
    service.request_log = RequestLog(settings.request_log_path, settings.request_log_flush_seconds)

    async def poll() -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            await asyncio.to_thread(service.manager.check)

    service.tasks.append(asyncio.create_task(poll()))
    try:
        yield
    finally:
        for task in service.tasks:
            task.cancel()
        service.request_log.close()  # drains what is queued: a graceful stop loses no row


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or ServingSettings()
    metrics = Metrics()
    service = Service(
        settings,
        metrics,
        BundleManager(settings, metrics),
        RateLimiter(
            settings.rate_limit_per_second, settings.rate_limit_burst, settings.rate_limit_max_clients
        ),
    )
    app = FastAPI(
        title="MovieLens recommendations",
        version="1.0",
        description="Serves the promoted bundle (ALS, EASE or item-kNN); see /ready for which one.",
        lifespan=lifespan,
        docs_url=None,  # served by the ops router from packaged assets
        redoc_url=None,
        responses={503: {"model": ErrorMessage, "description": "no bundle is loaded"}},
    )
    app.state.service = service
    app.add_middleware(ServiceMiddleware, service=service)
    # The routes themselves, not app.include_router: FastAPI 0.16x matches an included router as
    # a nested unit, which cost about 20 us per request, /health included (measured with an ASGI
    # loop and serve_bench.py --baseline-code). Starlette tries routes in order, so the probes
    # and then the serving routes come first: each route tried before the right one costs
    # 1-2 us, and the admin and docs routes are rarely asked for.
    probes: list[BaseRoute] = []
    operations: list[BaseRoute] = []
    for route in ops.router().routes:
        (probes if getattr(route, "path", None) in PROBES else operations).append(route)
    serving = recommendations.router(settings).routes + movies.router(settings).routes
    app.router.routes.extend([*probes, *serving, *operations])
    ops.mount_docs_assets(app)
    return app


app = create_app()
