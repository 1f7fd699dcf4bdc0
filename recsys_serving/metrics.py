"""Prometheus metrics of the API (one registry per app, so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


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
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Recommendation routes by who served them: the dashboard's per-bundle and per-arm panels.
        self.served = Counter(
            "recsys_served_total",
            "Answered recommendation requests",
            ["route", "bundle_version", "arm", "strategy", "status"],
            registry=self.registry,
        )
        self.served_latency = Histogram(
            "recsys_served_latency_seconds",
            "Latency of recommendation requests",
            ["route", "bundle_version", "arm"],
            buckets=LATENCY_BUCKETS,
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
        self.bundle_error = Gauge(
            "recsys_bundle_error",
            "1 while the promoted bundle cannot be resolved or loaded (the loaded one keeps serving)",
            registry=self.registry,
        )
        self.rate_limit_clients = Gauge(
            "recsys_rate_limit_clients", "Clients with a rate-limit bucket (capped)", registry=self.registry
        )
        self.log_pending = Gauge(
            "recsys_request_log_pending", "Request-log rows waiting to be written", registry=self.registry
        )
        self.log_written = Gauge(
            "recsys_request_log_written", "Request-log rows written", registry=self.registry
        )
        self.log_lost = Gauge(
            "recsys_request_log_lost",
            "Request-log rows given up on (a row SQLite refuses, or the backlog over its cap)",
            registry=self.registry,
        )
        self.log_error = Gauge(
            "recsys_request_log_error", "1 while the request log cannot be written", registry=self.registry
        )
