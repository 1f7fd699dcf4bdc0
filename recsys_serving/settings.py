"""Serving settings from ``RECSYS_*`` environment variables (pydantic-settings).

Relative paths resolve against the project root, and unset values default as in the pipeline
(both use :mod:`.paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .paths import default_tracking_uri, resolve_path
from .promotion import REGISTERED_MODEL


class ServingSettings(BaseSettings):
    # An empty variable means "not set" (docker compose passes unset ones through as empty).
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore", env_ignore_empty=True)

    data_root: str = "data"
    bundle_root: str | None = None  # default: <data_root>/bundles
    # Serve the bundle behind this MLflow registered-model alias instead of the CURRENT pointer.
    model_alias: str | None = None
    registered_model: str = REGISTERED_MODEL
    mlflow_tracking_uri: str | None = None
    request_log: str | None = None  # default: <data_root>/request_log.sqlite
    poll_seconds: float = Field(10.0, ge=0.1)
    max_k: int = Field(100, ge=1)
    max_list_items: int = Field(500, ge=1)  # liked / exclude / genres lengths
    max_body_bytes: int = Field(64 * 1024, ge=256)
    admin_api_key: str | None = None
    rate_limit_per_second: float = Field(200.0, ge=0)  # per client; 0 disables
    rate_limit_burst: int = Field(400, ge=1)
    rate_limit_max_clients: int = Field(10_000, ge=1)  # buckets kept; idle, then oldest, go first
    # Who a client is for the rate limit: its address, or its X-API-Key when it sends one.
    rate_limit_key: Literal["address", "api_key"] = "address"
    # Reverse proxies in front of the API whose X-Forwarded-For is trusted (0: use the peer).
    trusted_proxy_hops: int = Field(0, ge=0)
    # The request log's write interval: at most this much logging is lost if the process is killed.
    request_log_flush_seconds: float = Field(0.25, gt=0)
    # Answer known users from the lists ranked at packaging time when the bundle has them; false
    # always searches the index (the benchmark compares both).
    precomputed_lists: bool = True
    # The last places of a recommendation list that go to movies the model was not trained on (new
    # releases, rarely rated ones), the best by their content-estimated score when it is positive;
    # 0 disables (bundles without a cold part have none).
    cold_slots: int = Field(1, ge=0)

    @property
    def tracking_uri(self) -> str:
        """The MLflow store alias mode reads: the pipeline's default when none is set."""
        return self.mlflow_tracking_uri or default_tracking_uri()

    @property
    def bundle_path(self) -> Path:
        return (
            resolve_path(self.bundle_root) if self.bundle_root else resolve_path(self.data_root) / "bundles"
        )

    @property
    def request_log_path(self) -> Path:
        return (
            resolve_path(self.request_log)
            if self.request_log
            else resolve_path(self.data_root) / "request_log.sqlite"
        )
