"""One pure-ASGI middleware for what every request goes through: a request id, the rate limit,
the body size limit, Prometheus metrics and the request log.

Pure ASGI rather than BaseHTTPMiddleware: it runs on every request, /health included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from .deps import Service
from .ratelimit import client_identity
from .request_log import RequestIds, RequestRecord

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
UNTHROTTLED = {"/health", "/ready", "/metrics"}
LOGGED_ROUTES = {
    "/users/{user_id}/recommendations",
    "/recommendations",
    "/popular",
    "/movies/{movie_id}/similar",
}
WITH_BODY = {"POST", "PUT", "PATCH"}


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
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


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes (declared or not: a chunked
    body has no Content-Length) or the client disconnects."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, service: Service):
        self.app, self.service = app, service
        self.request_ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        started = time.perf_counter()
        arrived = time.time()
        request_id = self.request_ids.next()
        status_holder = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            if scope["path"] not in UNTHROTTLED:
                peer = (scope.get("client") or ("unknown", 0))[0]
                wait = service.limiter.allow(client_identity(headers, peer, service.settings))
                if wait:
                    retry = str(max(1, int(np.ceil(wait)))).encode()
                    await send_json(
                        send_with_id, 429, {"detail": "rate limit exceeded"}, [(b"retry-after", retry)]
                    )
                    return
            if scope["method"] in WITH_BODY or b"transfer-encoding" in headers:
                # Read (at most the limit) here, so an oversized body is a 413 whether its length
                # was declared or it came chunked; the app gets the body as one message.
                limit = service.settings.max_body_bytes
                declared = headers.get(b"content-length")
                body = (
                    None
                    if declared is not None and declared.isdigit() and int(declared) > limit
                    else await read_body(receive, limit)
                )
                if body is None:
                    await send_json(send_with_id, 413, {"detail": f"request body over {limit} bytes"})
                    return
                receive = replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, arrived, started, status_holder["status"])

    def _record(self, scope: Scope, request_id: str, arrived: float, started: float, status: int) -> None:
        service = self.service
        template = getattr(scope.get("route"), "path", "unmatched")
        elapsed = time.perf_counter() - started
        service.metrics.requests.labels(template, scope["method"], str(status)).inc()
        service.metrics.latency.labels(template, scope["method"], str(status)).observe(elapsed)
        if template not in LOGGED_ROUTES:
            return
        served = (scope.get("state") or {}).get("served", {})
        version, arm = served.get("bundle_version") or "none", served.get("arm") or "none"
        service.metrics.served.labels(
            template, version, arm, served.get("strategy") or "none", str(status)
        ).inc()
        service.metrics.served_latency.labels(template, version, arm).observe(elapsed)
        if service.request_log is not None:
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
                    status=status,
                    experiment_id=served.get("experiment_id"),
                    arm=served.get("arm"),
                    simulated_ts=simulated_time(scope),
                    epsilon=served.get("epsilon"),
                )
            )


def simulated_time(scope: Scope) -> float | None:
    """The client's clock in traffic replay (``X-Simulated-Time``, unix seconds), when it sends one."""
    for name, value in scope.get("headers") or []:
        if name == b"x-simulated-time":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands the app the buffered body, then the client's later messages
    (a disconnect)."""
    delivered = False

    async def receive_buffered() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_buffered
