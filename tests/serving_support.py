"""Shared by the serving tests: a synthetic dataset with users the model drops, bundles built by
the pipeline's own code, and uvicorn on loopback."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import uvicorn

from recsys_assets.modeling.packaging import package_bundle
from recsys_assets.modeling.recommenders import ALSParams
from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.processing.splits import SplitRules, temporal_split
from recsys_assets.sources.formats import read_movies, read_ratings, read_tags
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
from recsys_serving.main import create_app
from recsys_serving.promotion import promote
from recsys_serving.settings import ServingSettings

DROPPED_USER, NEGATIVE_USER = 10_001, 10_002


def serving_dataset(directory: Path) -> dict:
    """Synthetic ratings, interactions and splits for the serving tests."""
    directory = write_dataset(SyntheticConfig(n_users=300, n_movies=600, n_ratings=20_000, seed=9), directory)
    ratings, movies = read_ratings(directory), read_movies(directory)
    # Two users the model never sees: two top ratings (the k-core drops them) and three low ones
    # of the most popular movies (no positive at all).
    popular = ratings.group_by("movie_id").len().sort("len", descending=True)["movie_id"].to_list()
    extra = [(DROPPED_USER, m, 5.0) for m in popular[5:7]] + [(NEGATIVE_USER, m, 1.0) for m in popular[:3]]
    ratings = pl.concat(
        [
            ratings,
            pl.DataFrame(
                {
                    "user_id": [u for u, _, _ in extra],
                    "movie_id": [m for _, m, _ in extra],
                    "rating": [r for _, _, r in extra],
                    "timestamp": [ratings["timestamp"].max()] * len(extra),
                },
                schema=ratings.schema,
            ),
        ]
    )
    interactions, _ = build_interactions(ratings, InteractionRules())
    splits = temporal_split(interactions, SplitRules(strategy="leave_last_n", n=2))
    return {"ratings": ratings, "movies": movies, "splits": splits, "tags": read_tags(directory)}


def build(root: Path, dataset: dict, factors: int, kind: str = "als") -> Path:
    plan = TrainingPlan(
        als=ALSParams(factors=factors, iterations=5), tune=False, bootstrap_samples=0, model_kind=kind
    )
    model = train_and_evaluate(dataset["splits"], plan, info=lambda _: None)
    return package_bundle(
        root,
        model,
        dataset["movies"],
        dataset["ratings"],
        dataset["splits"],
        {"dataset": {"source": "synthetic test"}},
    )


def serving_bundles(root: Path, dataset: dict) -> dict[str, Path]:
    """ALS bundles of two sizes (a, b), an EASE and an item-kNN bundle."""
    return {
        "a": build(root, dataset, 8),
        "b": build(root, dataset, 16),
        "ease": build(root, dataset, 8, "ease"),
        "item_knn": build(root, dataset, 8, "item_knn"),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """uvicorn in a thread; leaving the context runs the app's shutdown (the request log flush)."""

    def __init__(self, settings: ServingSettings):
        self.app = create_app(settings)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                # uvicorn itself trusts X-Forwarded-For from loopback peers; off, so the tests
                # see what the API's own RECSYS_TRUSTED_PROXY_HOPS decides.
                proxy_headers=False,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(20)


def settings_for(root: Path, tmp_path: Path, **overrides: object) -> ServingSettings:
    values = {
        "bundle_root": str(root),
        "request_log": str(tmp_path / "requests.sqlite"),
        "poll_seconds": 60.0,
        "rate_limit_per_second": 0,
        **overrides,
    }
    return ServingSettings(**values)


def bundle_root(tmp_path: Path, bundles: dict[str, Path], promoted: str = "a", *names: str) -> Path:
    """A bundle root holding copies of ``promoted`` and ``names``, with ``promoted`` promoted."""
    root = tmp_path / "bundles"
    root.mkdir()
    for name in {promoted, *names}:
        shutil.copytree(bundles[name], root / bundles[name].name)
    promote(root, bundles[promoted].name, reason="test")
    return root
