"""The recommendation API: ``uvicorn recsys_serving.main:app``.

The promoted bundle is loaded at startup and swapped atomically when a newer one is promoted:
each request takes the engine reference once, so in-flight requests finish on the bundle they
started with and no response mixes two bundles. A bundle that fails to load is not swapped in;
the old one keeps serving and ``/ready`` reports the error.
"""

import asyncio
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qsl

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .bundle import load_bundle
from .engine import Engine, Scored, limit_threads
from .promotion import promoted_path
from .request_log import RequestIds, RequestLog, RequestRecord
from .schemas import (
    INT64_MAX,
    INT64_MIN,
    ColdStartRequest,
    ErrorMessage,
    Health,
    InvalidInput,
    MovieResponse,
    PopularMovies,
    Readiness,
    Recommendations,
    ReloadResult,
    SimilarMovies,
)
from .settings import ServingSettings

log = logging.getLogger("recsys_serving")
NO_ROWS = np.empty(0, dtype=np.int64)
ID_LIST = re.compile(r"^(-?\d+(,-?\d+)*)?$")
UNTHROTTLED = {"/health", "/ready", "/metrics"}
LOGGED_ROUTES = {
    "/users/{user_id}/recommendations",
    "/recommendations",
    "/popular",
    "/movies/{movie_id}/similar",
}


ID_SCHEMA = {"type": "integer", "format": "int64", "minimum": INT64_MIN, "maximum": INT64_MAX}
ID_LIST_SCHEMA = {"type": "string", "pattern": ID_LIST.pattern}


def query_docs(*params: tuple[str, str, dict, bool, str]) -> dict:
    """OpenAPI parameters for routes that parse their own query strings."""
    return {
        "parameters": [
            {"name": name, "in": where, "required": required, "schema": schema, "description": text}
            for name, where, schema, required, text in params
        ]
    }


class JSONResponse(Response):
    """JSON encoded by orjson: encoding a response with the standard library took a sizeable share
    of a recommendation request (benchmarks/serve_bench.py)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_request_latency_seconds",
            "Request latency",
            ["route", "method", "status"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "recsys_fallbacks_total",
            "Requests answered by the popularity fallback",
            ["reason"],
            registry=self.registry,
        )
        self.bundle = Gauge(
            "recsys_bundle_info", "The served bundle (value 1)", ["version"], registry=self.registry
        )
        self.swaps = Counter("recsys_bundle_swaps_total", "Bundles swapped in", registry=self.registry)
        self.load_failures = Counter(
            "recsys_bundle_load_failures_total", "Bundles refused", registry=self.registry
        )


class BundleManager:
    """Holds the served engine and swaps in newer promoted bundles."""

    def __init__(self, settings: ServingSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.engine: Engine | None = None
        self.loaded_at: str | None = None
        self.source: str | None = None
        self.error: str | None = None
        self._refused: Path | None = None
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
        import mlflow  # only when the registry is the source of truth

        uri = self.settings.mlflow_tracking_uri
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        version = client.get_model_version_by_alias(self.settings.registered_model, self.settings.model_alias)
        path = version.tags.get("bundle_path")
        if not path:
            raise RuntimeError(f"model version {version.version} has no bundle_path tag")
        return (
            Path(path),
            f"MLflow {self.settings.registered_model}@{self.settings.model_alias} (v{version.version})",
        )

    def check(self, force: bool = False) -> bool:
        """Load the promoted bundle if it is not the one served; True when a swap happened."""
        with self._lock:
            try:
                path, source = self._locate()
            except Exception as exc:  # registry unreachable, alias missing: keep serving
                self.error = f"cannot resolve the promoted bundle: {exc}"
                return False
            if path is None:
                return False
            current = self.engine.bundle.path if self.engine else None
            if current is not None and current.resolve() == path.resolve():
                return False
            if path == self._refused and not force:
                return False
            try:
                engine = Engine(load_bundle(path), self.settings.precomputed_lists)
            except Exception as exc:
                self._refused = path
                self.metrics.load_failures.inc()
                serving = f"still serving {self.engine.version}" if self.engine else "nothing is served"
                self.error = f"bundle {path.name} refused: {exc}; {serving}"
                log.error(self.error)
                return False
            previous, self.engine = self.engine, engine  # the swap: one reference assignment
            if previous is not None:
                self.metrics.bundle.remove(previous.version)
            self.metrics.bundle.labels(engine.version).set(1)
            self.metrics.swaps.inc()
            self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
            self.source, self.error, self._refused = source, None, None
            log.info(f"serving bundle {engine.version} from {source}")
            return True


class RateLimiter:
    """Token bucket per client address."""

    def __init__(self, per_second: float, burst: int):
        self.per_second, self.burst = per_second, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> float:
        """0 when allowed, else the seconds until a token is available."""
        if self.per_second <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.per_second
        if len(self.buckets) > 10_000:  # forget idle clients rather than grow without bound
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < 60}
        self.buckets[client] = (tokens - 1, now)
        return 0.0


@dataclass
class Service:
    settings: ServingSettings
    metrics: Metrics
    manager: BundleManager
    limiter: RateLimiter
    request_log: RequestLog | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)


async def _json(
    send: Callable, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    """Request ids, rate limiting, body size limits, Prometheus metrics and the request log.

    Pure ASGI rather than BaseHTTPMiddleware: it runs on every request, /health included.
    """

    def __init__(self, app: Callable, service: Service):
        self.app, self.service = app, service
        self.request_ids = RequestIds()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        started = time.perf_counter()
        arrived = time.time()
        request_id = self.request_ids.next()
        status_holder = {"status": 500}
        path = scope["path"]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if path not in UNTHROTTLED:
                client = (scope.get("client") or ("unknown", 0))[0]
                wait = service.limiter.allow(client)
                if wait:
                    retry = str(max(1, int(np.ceil(wait)))).encode()
                    await _json(
                        send_with_id,
                        429,
                        {"detail": "rate limit exceeded"},
                        [(b"retry-after", retry)],
                    )
                    return
            limit = service.settings.max_body_bytes
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _json(send_with_id, 413, {"detail": f"request body over {limit} bytes"})
                return
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except BodyTooLarge:
                await _json(send_with_id, 413, {"detail": f"request body over {limit} bytes"})
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            status = str(status_holder["status"])
            elapsed = time.perf_counter() - started
            service.metrics.requests.labels(template, scope["method"], status).inc()
            service.metrics.latency.labels(template, scope["method"], status).observe(elapsed)
            if template in LOGGED_ROUTES and service.request_log is not None:
                served = (scope.get("state") or {}).get("served", {})
                service.request_log.log(
                    RequestRecord(
                        request_id=request_id,
                        ts=arrived,
                        route=template,
                        user_id=served.get("user_id"),
                        cold_start=served.get("cold_start", False),
                        strategy=served.get("strategy"),
                        k=served.get("k"),
                        items=served.get("items"),
                        bundle_version=served.get("bundle_version"),
                        latency_ms=elapsed * 1000,
                        status=status_holder["status"],
                    )
                )


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or ServingSettings()
    metrics = Metrics()
    service = Service(
        settings,
        metrics,
        BundleManager(settings, metrics),
        RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_threads()
        await asyncio.to_thread(service.manager.check)
        if service.manager.engine is None:
            log.warning(service.manager.error or service.manager.no_bundle_message())
        service.request_log = RequestLog(settings.request_log_path)

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
            service.request_log.close()

    app = FastAPI(
        title="MovieLens recommendations",
        version="1.0",
        description="Serves the promoted ALS bundle; see /ready for which one.",
        lifespan=lifespan,
        responses={503: {"model": ErrorMessage, "description": "no bundle is loaded"}},
    )
    app.state.service = service
    app.add_middleware(ServiceMiddleware, service=service)

    def engine() -> Engine:
        current = service.manager.engine
        if current is None:
            raise HTTPException(503, detail=service.manager.error or service.manager.no_bundle_message())
        return current

    Served = Annotated[Engine, Depends(engine)]
    rejected = {422: {"model": InvalidInput, "description": "invalid input; the detail names the field"}}
    not_found = {404: {"model": ErrorMessage}, **rejected}
    body_rejected = {400: {"model": ErrorMessage, "description": "the body is not JSON"}, **rejected}
    k_schema = {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": 10}

    def check_length(name: str, values: list) -> None:
        if len(values) > settings.max_list_items:
            raise HTTPException(
                422, detail=f"{name}: at most {settings.max_list_items} entries, got {len(values)}"
            )

    def check_genres(current: Engine, genres: list[str], field: str) -> None:
        unknown = current.unknown_genres(genres)
        if unknown:
            raise HTTPException(
                422, detail=f"{field}: unknown genre(s) {unknown}; known: {current.genre_names}"
            )

    # Hot GET routes parse their query strings here: FastAPI's per-parameter validation costs more
    # than the recommendation itself (measured in benchmarks/serve_bench.py). Errors keep FastAPI's
    # 422 shape and name the field.
    def invalid(field: str, where: str, message: str, value: object) -> HTTPException:
        return HTTPException(
            422, detail=[{"type": "value_error", "loc": [where, field], "msg": message, "input": value}]
        )

    def query(request: Request) -> dict[str, str]:
        """The query string as a dict, the last value of a repeated name winning (as Starlette's
        QueryParams.get); plain strings skip the URL-decoding Starlette always does."""
        text = request.scope["query_string"].decode("latin-1")
        if "%" in text or "+" in text:
            return dict(parse_qsl(text, keep_blank_values=True))
        return dict(part.partition("=")[::2] for part in text.split("&") if part)

    def parse_int(value: str, field: str, where: str = "query") -> int:
        try:
            number = int(value)
        except ValueError:
            raise invalid(field, where, "Input should be a valid integer", value) from None
        if not INT64_MIN <= number <= INT64_MAX:
            raise invalid(field, where, "Input should be a 64-bit integer", value)
        return number

    def parse_k(params) -> int:
        raw = params.get("k")
        if raw is None:
            return 10
        k = parse_int(raw, "k")
        if not 1 <= k <= settings.max_k:
            raise invalid("k", "query", f"Input should be between 1 and {settings.max_k}", raw)
        return k

    def parse_id_list(raw: str | None, field: str) -> list[int]:
        if not raw:
            return []
        if not ID_LIST.match(raw):
            raise invalid(field, "query", "Input should be comma-separated integers", raw)
        values = [parse_int(v, field) for v in raw.split(",")]
        check_length(field, values)
        return values

    def parse_genres(current: Engine, raw: str | None, field: str) -> list[str]:
        genres = [g.strip() for g in raw.split(",") if g.strip()] if raw else []
        check_length(field, genres)
        check_genres(current, genres, field)
        return genres

    def parse_bool(raw: str | None, field: str) -> bool:
        if raw is None:
            return False
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise invalid(field, "query", "Input should be a valid boolean", raw)

    def items(current: Engine, scored: Scored) -> list[dict]:
        """Response items as plain dicts (the schemas document them; building pydantic objects per
        item and re-validating them would cost more than the recommendation itself)."""
        out = []
        fields = current.movie_fields
        for rank, (row, score) in enumerate(
            zip(scored.rows.tolist(), scored.scores.tolist(), strict=True), 1
        ):
            item = {**fields[row], "rank": rank, "score": score}
            if scored.because is not None:
                liked = scored.because[rank - 1]
                item["because"] = (
                    None
                    if liked is None
                    else {"movieId": int(current.item_ids[liked]), "title": current.titles[liked]}
                )
            out.append(item)
        return out

    def record(request: Request, current: Engine, strategy: str, k: int, served: list[dict], **extra) -> None:
        request.state.served = {
            "strategy": strategy,
            "k": k,
            "bundle_version": current.version,
            "items": [(m["movieId"], m["rank"], m["score"]) for m in served],
            **extra,
        }

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        return Health()

    @app.get("/ready", response_model=Readiness, tags=["ops"], responses={503: {"model": Readiness}})
    async def ready() -> Response:
        manager = service.manager
        current = manager.engine
        if current is None:
            body = Readiness(ready=False, error=manager.error, message=manager.no_bundle_message())
            return JSONResponse(body.model_dump(), status_code=503)
        dataset = current.bundle.manifest.get("dataset", {}).get("source")
        body = Readiness(
            ready=True,
            bundle_version=current.version,
            model_kind=current.kind,
            dataset=dataset,
            users=len(current.user_ids),
            items=current.n_items,
            loaded_at=manager.loaded_at,
            source=manager.source,
            error=manager.error or (service.request_log.error if service.request_log else None),
        )
        return JSONResponse(body.model_dump())

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=Recommendations,
        tags=["recommendations"],
        responses=rejected,
        openapi_extra=query_docs(
            ("user_id", "path", ID_SCHEMA, True, "the user"),
            ("k", "query", k_schema, False, f"number of movies, 1-{settings.max_k} (default 10)"),
            ("exclude", "query", ID_LIST_SCHEMA, False, "comma-separated movie ids never to return"),
            ("genres", "query", {"type": "string"}, False, "comma-separated genres: only movies of these"),
            ("explain", "query", {"type": "boolean"}, False, "say which liked movie contributed most"),
        ),
    )
    async def recommend_for_user(request: Request) -> Response:
        current = engine()
        params = query(request)
        user_id = parse_int(request.path_params["user_id"], "user_id", "path")
        k = parse_k(params)
        excluded = parse_id_list(params.get("exclude"), "exclude")
        genres = parse_genres(current, params.get("genres"), "genres")
        explain = parse_bool(params.get("explain"), "explain")
        exclude_rows = current.item_rows(np.array(excluded, dtype=np.int64)) if excluded else NO_ROWS
        row = current.user_row(user_id)
        if row is None:
            metrics.fallbacks.labels("unknown_user").inc()
            scored, strategy = current.popular(k, genres, exclude_rows), "popular_fallback"
        else:
            scored, strategy = current.recommend_user(row, k, exclude_rows, genres, explain), current.kind
        served = items(current, scored)
        record(request, current, strategy, k, served, user_id=user_id)
        return JSONResponse(
            {
                "bundle_version": current.version,
                "model_kind": current.kind,
                "strategy": strategy,
                "user_id": user_id,
                "items": served,
                "unknown_movie_ids": [],
            }
        )

    @app.post(
        "/recommendations", response_model=Recommendations, tags=["recommendations"], responses=body_rejected
    )
    async def recommend_cold_start(request: Request, current: Served, body: ColdStartRequest) -> Response:
        check_length("liked", body.liked)
        check_length("genres", body.genres)
        check_genres(current, body.genres, "genres")
        if body.k > settings.max_k:
            raise HTTPException(422, detail=f"k: at most {settings.max_k}, got {body.k}")
        liked = np.array(body.liked, dtype=np.int64)
        rows = current.lookup(current.item_ids, liked)
        unknown = sorted({int(m) for m in liked[rows < 0]})
        known = np.unique(rows[rows >= 0])
        if known.size == 0:
            metrics.fallbacks.labels("no_known_liked").inc()
            scored, strategy = current.popular(body.k, body.genres, known), "popular_fallback"
        else:
            scored, strategy = current.recommend_liked(known, body.k, body.genres, body.explain), "fold_in"
        served = items(current, scored)
        record(request, current, strategy, body.k, served, cold_start=True)
        return JSONResponse(
            {
                "bundle_version": current.version,
                "model_kind": current.kind,
                "strategy": strategy,
                "user_id": None,
                "items": served,
                "unknown_movie_ids": unknown,
            }
        )

    @app.get("/movies/{movie_id}", response_model=MovieResponse, tags=["movies"], responses=not_found)
    async def get_movie(
        current: Served, movie_id: Annotated[int, PathParam(ge=INT64_MIN, le=INT64_MAX)]
    ) -> Response:
        row = current.item_row(movie_id)
        if row is None:
            raise HTTPException(404, detail=f"movie {movie_id} is not in the catalogue")
        return JSONResponse({**current.movie_fields[row], "bundle_version": current.version})

    @app.get(
        "/movies/{movie_id}/similar",
        response_model=SimilarMovies,
        tags=["movies"],
        responses=not_found,
        openapi_extra=query_docs(
            ("movie_id", "path", ID_SCHEMA, True, "the movie"),
            ("k", "query", k_schema, False, f"number of movies, 1-{settings.max_k} (default 10)"),
        ),
    )
    async def similar_movies(request: Request) -> Response:
        current = engine()
        movie_id = parse_int(request.path_params["movie_id"], "movie_id", "path")
        k = parse_k(query(request))
        row = current.item_row(movie_id)
        if row is None:
            raise HTTPException(404, detail=f"movie {movie_id} is not in the catalogue")
        served = items(current, current.similar(row, k))
        record(request, current, "als", k, served)
        return JSONResponse({"bundle_version": current.version, "movieId": movie_id, "items": served})

    @app.get(
        "/popular",
        response_model=PopularMovies,
        tags=["movies"],
        responses=rejected,
        openapi_extra=query_docs(
            ("k", "query", k_schema, False, f"number of movies, 1-{settings.max_k} (default 10)"),
            ("genre", "query", {"type": "string"}, False, "only movies of this genre"),
        ),
    )
    async def popular(request: Request) -> Response:
        current = engine()
        params = query(request)
        k = parse_k(params)
        genre = params.get("genre") or None
        genres = parse_genres(current, genre, "genre")
        served = items(current, current.popular(k, genres, NO_ROWS))
        record(request, current, "popular_fallback", k, served)
        return JSONResponse({"bundle_version": current.version, "genre": genre, "items": served})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def admin(x_api_key: Annotated[str | None, Header()] = None) -> None:
        expected = settings.admin_api_key
        if expected and not (x_api_key and secrets.compare_digest(x_api_key, expected)):
            raise HTTPException(401, detail="missing or wrong X-API-Key")

    @app.post("/admin/reload", response_model=ReloadResult, tags=["ops"], dependencies=[Depends(admin)])
    async def reload() -> ReloadResult:
        changed = await asyncio.to_thread(service.manager.check, True)
        current = service.manager.engine
        return ReloadResult(
            bundle_version=current.version if current else None,
            changed=changed,
            error=service.manager.error,
        )

    return app


app = create_app()
