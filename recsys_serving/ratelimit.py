"""Per-client token buckets, and who the client is behind proxies."""

from __future__ import annotations

import hashlib
import time

from .settings import ServingSettings


class RateLimiter:
    """A token bucket per client, in bounded memory: past ``max_clients`` buckets, idle ones go
    first, then the least recently seen, so a flood of distinct clients cannot grow it."""

    def __init__(self, per_second: float, burst: int, max_clients: int = 10_000):
        self.per_second, self.burst, self.max_clients = per_second, burst, max_clients
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
        if client not in self.buckets and len(self.buckets) >= self.max_clients:
            self._forget(now)
        self.buckets[client] = (tokens - 1, now)
        return 0.0

    def _forget(self, now: float) -> None:
        # A bucket idle long enough to refill completely holds nothing worth keeping.
        full_after = self.burst / self.per_second
        kept = {k: v for k, v in self.buckets.items() if now - v[1] < full_after}
        if len(kept) >= self.max_clients:
            newest = sorted(kept.items(), key=lambda item: item[1][1])[len(kept) // 2 :]
            kept = dict(newest)
        self.buckets = kept


def client_identity(headers: dict[bytes, bytes], peer: str, settings: ServingSettings) -> str:
    """The key a client is rate-limited by.

    ``rate_limit_key=api_key``: the ``X-API-Key`` a client sends (hashed), so each key has its own
    bucket wherever it connects from; requests without one fall back to the address. The address
    is the socket's peer, or, behind ``trusted_proxy_hops`` reverse proxies, the entry of
    ``X-Forwarded-For`` the outermost trusted proxy saw (the n-th from the right: entries further
    left are whatever the client chose to send).
    """
    if settings.rate_limit_key == "api_key":
        key = headers.get(b"x-api-key")
        if key:
            return "key:" + hashlib.sha256(key).hexdigest()[:16]
    hops = settings.trusted_proxy_hops
    if hops:
        forwarded = [h.strip() for h in headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")]
        forwarded = [h for h in forwarded if h]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return peer
