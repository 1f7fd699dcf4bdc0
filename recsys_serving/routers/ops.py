"""Operations: liveness, readiness, metrics, reloading, and the API docs served offline."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from swagger_ui_bundle import swagger_ui_path

from ..deps import Service, require_admin, service_of
from ..experiments import Experiment, start_experiment, stop_experiment
from ..responses import REJECTED, JSONResponse
from ..schemas import ErrorMessage, ExperimentStatus, Health, Readiness, ReloadResult, RequestLogStatus

DOCS_ASSETS = "/docs-assets"


def router() -> APIRouter:
    routes = APIRouter(tags=["ops"])

    @routes.get("/health", response_model=Health)
    async def health() -> Health:
        return Health()

    @routes.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready(request: Request) -> Response:
        service = service_of(request)
        manager, log = service.manager, service.request_log
        logged = (
            RequestLogStatus(written=log.written, pending=log.pending, lost=log.lost, error=log.error)
            if log
            else None
        )
        current = manager.engine
        if current is None:
            body = Readiness(
                ready=False, error=manager.error, message=manager.no_bundle_message(), request_log=logged
            )
            return JSONResponse(body.model_dump(), status_code=503)
        body = Readiness(
            ready=True,
            bundle_version=current.version,
            model_kind=current.kind,
            dataset=current.bundle.manifest.get("dataset", {}).get("source"),
            users=len(current.user_ids),
            items=current.n_items,
            loaded_at=manager.loaded_at,
            source=manager.source,
            error=manager.error,
            request_log=logged,
        )
        return JSONResponse(body.model_dump())

    @routes.get("/metrics", response_class=Response)
    async def prometheus_metrics(request: Request) -> Response:
        service = service_of(request)
        metrics, log = service.metrics, service.request_log
        metrics.rate_limit_clients.set(len(service.limiter.buckets))
        if log is not None:
            metrics.log_pending.set(log.pending)
            metrics.log_written.set(log.written)
            metrics.log_lost.set(log.lost)
            metrics.log_error.set(1 if log.error else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @routes.post("/admin/reload", response_model=ReloadResult, dependencies=[Depends(require_admin)])
    async def reload(request: Request) -> ReloadResult:
        manager = service_of(request).manager
        changed = await asyncio.to_thread(manager.check, True)
        current = manager.engine
        return ReloadResult(
            bundle_version=current.version if current else None, changed=changed, error=manager.error
        )

    admin = [Depends(require_admin)]
    unauthorised: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorMessage, "description": "missing or wrong X-API-Key"}
    }

    @routes.get(
        "/admin/experiment", response_model=ExperimentStatus, dependencies=admin, responses=unauthorised
    )
    async def experiment_status(request: Request) -> ExperimentStatus:
        return _experiment_status(service_of(request))

    @routes.put(
        "/admin/experiment",
        response_model=ExperimentStatus,
        dependencies=admin,
        responses={
            **unauthorised,
            **REJECTED,
            400: {"model": ErrorMessage, "description": "the body is not JSON"},
            404: {"model": ErrorMessage, "description": "an arm names a bundle that is not there"},
            409: {"model": ErrorMessage, "description": "an arm's bundle does not load"},
        },
    )
    async def start(request: Request, experiment: Experiment) -> ExperimentStatus:
        """Start (or replace) the A/B experiment: written to EXPERIMENT.json beside the bundles,
        so every replica serves it; recorded in experiments.jsonl."""
        service = service_of(request)
        try:
            await asyncio.to_thread(start_experiment, service.settings.bundle_path, experiment)
        except FileNotFoundError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        await asyncio.to_thread(service.manager.check, True)
        status = _experiment_status(service)
        if status.error:
            raise HTTPException(409, detail=status.error)
        return status

    @routes.delete(
        "/admin/experiment",
        response_model=ExperimentStatus,
        dependencies=admin,
        responses={
            **unauthorised,
            **REJECTED,
            404: {"model": ErrorMessage, "description": "no experiment is running"},
        },
    )
    async def stop(
        request: Request, reason: Annotated[str, Query(max_length=500)] = "stopped by an admin"
    ) -> ExperimentStatus:
        """Stop the experiment: every user back on the champion; recorded with the reason."""
        service = service_of(request)
        stopped = await asyncio.to_thread(stop_experiment, service.settings.bundle_path, reason)
        if stopped is None:
            raise HTTPException(404, detail="no experiment is running")
        await asyncio.to_thread(service.manager.check, True)
        return _experiment_status(service)

    @routes.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=request.app.openapi_url,
            title=f"{request.app.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    return routes


def _experiment_status(service: Service) -> ExperimentStatus:
    manager = service.manager
    split, champion = manager.split, manager.engine
    if split is None:
        return ExperimentStatus(error=manager.experiment_error)
    served = {name: engine or champion for name, engine in split.engines.items()}
    arms = {name: engine.version for name, engine in served.items() if engine is not None}
    return ExperimentStatus(running=split.experiment, arms=arms, weights=split.experiment.weights)


def mount_docs_assets(app: FastAPI) -> None:
    """Swagger UI's files from the swagger-ui-bundle package: /docs works without internet (FastAPI
    loads them from a CDN by default)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
