"""Guarantees of the API that only show when something goes wrong: a swap landing inside a request,
shutdown, an approximate index coming up short, clients behind proxies, and faults on loopback
(a killed process, an unwritable request log, broken pointers and bundle directories)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_support import Server, bundle_root, free_port, settings_for

from recsys_assets.modeling.index import build_index
from recsys_serving.bundle import load_bundle
from recsys_serving.engine import NO_ROWS, Engine
from recsys_serving.promotion import POINTER, promote


def eventually(condition: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value or time.time() > deadline:
            assert value, "condition not met in time"
            return value
        time.sleep(0.05)


def logged_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM requests").fetchone()[0]


ROUTES = {
    # route: (the engine method that scores it, the request)
    "known user": ("recommend_known", lambda c, b: c.get(f"/users/{int(b.user_ids[2])}/recommendations")),
    "cold start": (
        "recommend_liked",
        lambda c, b: c.post("/recommendations", json={"liked": b.item_ids[:3].tolist(), "k": 5}),
    ),
    "similar": ("similar", lambda c, b: c.get(f"/movies/{int(b.item_ids[4])}/similar")),
    "popular": ("popular", lambda c, b: c.get("/popular", params={"k": 5})),
}


@pytest.mark.parametrize("route", ROUTES)
def test_a_swap_between_scoring_and_responding_never_mixes_bundles(
    tmp_path: Path, bundles, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """The swap is forced into the request: the engine's scoring call promotes bundle b and swaps
    it in before the response is built. The response must still be all of bundle a (version,
    items), and the next request all of b."""
    method, call = ROUTES[route]
    root = bundle_root(tmp_path, bundles, "a", "b")
    a, b = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    server = Server(settings_for(root, tmp_path))
    with server as client:
        manager = server.app.state.service.manager
        expected = {a.version: call(client, a).json()}
        original = getattr(Engine, method)
        swapped = []

        def score_then_swap(engine: Engine, *args, **kwargs):
            result = original(engine, *args, **kwargs)
            if not swapped:
                promote(root, b.version, reason="swap inside a request")
                swapped.append(manager.check())
            return result

        monkeypatch.setattr(Engine, method, score_then_swap)
        during = call(client, a).json()
        monkeypatch.setattr(Engine, method, original)
        assert swapped == [True] and manager.engine.version == b.version
        after = call(client, a).json()
    assert during == expected[a.version]
    assert after["bundle_version"] == b.version


def test_graceful_shutdown_writes_every_logged_request(tmp_path: Path, bundles) -> None:
    """With an hour between periodic writes, only the shutdown drain can save the rows."""
    root = bundle_root(tmp_path, bundles)
    settings = settings_for(root, tmp_path, request_log_flush_seconds=3600)
    user_id = int(load_bundle(bundles["a"]).user_ids[0])
    with Server(settings) as client:
        for _ in range(25):
            assert client.get(f"/users/{user_id}/recommendations").status_code == 200
        logged = client.get("/ready").json()["request_log"]
        assert logged["pending"] == 25 and logged["written"] == 0
    assert logged_rows(settings.request_log_path) == 25


def test_an_approximate_index_that_comes_up_short_falls_back_to_exact_ranking(bundles) -> None:
    """IVF probing one of 50 lists finds a dozen of 600 items: asked for 100, the engine ranks
    exactly instead of returning fewer."""
    bundle = load_bundle(bundles["a"])
    bundle.index = build_index(bundle.item_factors, bundle.item_ids, "ivf", ivf_nlist=50, ivf_nprobe=1)
    _, labels = bundle.index.search(bundle.user_factors[:5], 100)
    assert (labels < 0).any(axis=1).all()  # the index alone comes up short for every user
    engine = Engine(bundle, use_precomputed=False)
    for row in range(5):
        seen = bundle.seen[row].indices
        scores = bundle.item_factors @ bundle.user_factors[row]
        scores[seen] = -np.inf
        expected = np.lexsort((np.arange(scores.size), -scores))[:100]
        got = engine.recommend_user(row, 100, NO_ROWS, [], False)
        assert got.rows.tolist() == expected.tolist()


def test_rate_limit_keys_on_the_forwarded_client_or_the_api_key(tmp_path: Path, bundles) -> None:
    root = bundle_root(tmp_path, bundles)
    limited = {"rate_limit_per_second": 0.01, "rate_limit_burst": 2}

    def statuses(client: httpx.Client, headers: dict[str, str], n: int = 3) -> list[int]:
        return [client.get("/popular", headers=headers).status_code for _ in range(n)]

    # Behind one trusted proxy: the address it appended is the client; what the client put in
    # front of it is not trusted.
    with Server(settings_for(root, tmp_path, trusted_proxy_hops=1, **limited)) as client:
        assert statuses(client, {"X-Forwarded-For": "10.0.0.1"}) == [200, 200, 429]
        assert statuses(client, {"X-Forwarded-For": "10.0.0.1, 10.0.0.2"}) == [200, 200, 429]
        assert statuses(client, {"X-Forwarded-For": "10.0.0.2, 10.0.0.1"}) == [429, 429, 429]
    # No trusted proxy: the header is ignored and every request shares the peer's bucket.
    with Server(settings_for(root, tmp_path, **limited)) as client:
        assert statuses(client, {"X-Forwarded-For": "10.0.0.1"}, 2) == [200, 200]
        assert statuses(client, {"X-Forwarded-For": "10.0.0.3"}, 1) == [429]
    with Server(settings_for(root, tmp_path, rate_limit_key="api_key", **limited)) as client:
        assert statuses(client, {"X-API-Key": "batch-a"}) == [200, 200, 429]
        assert statuses(client, {"X-API-Key": "batch-b"}) == [200, 200, 429]
        assert statuses(client, {}) == [200, 200, 429]  # no key: the address


def test_docs_render_without_internet(served) -> None:
    client = served
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in page.text
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000


@pytest.fixture
def served(tmp_path: Path, bundles) -> Iterator[httpx.Client]:
    with Server(settings_for(bundle_root(tmp_path, bundles), tmp_path)) as client:
        yield client


def test_an_unwritable_request_log_keeps_serving_reports_and_recovers(tmp_path: Path, bundles) -> None:
    """Another connection holds SQLite's write lock (what a full disk or a read-only file also
    look like to the writer: an OperationalError): requests are still served, /ready and /metrics
    say so, and once the lock goes every row is written."""
    root = bundle_root(tmp_path, bundles)
    settings = settings_for(root, tmp_path, request_log_flush_seconds=0.05)
    with Server(settings) as client:
        assert client.get("/popular").status_code == 200
        eventually(lambda: client.get("/ready").json()["request_log"]["written"] == 1)
        blocker = sqlite3.connect(settings.request_log_path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            assert all(client.get("/popular").status_code == 200 for _ in range(10))
            ready = eventually(
                lambda: client.get("/ready").json()["request_log"]["error"] and client.get("/ready").json()
            )
            assert "cannot be written" in ready["request_log"]["error"] and ready["ready"]
            assert "recsys_request_log_error 1.0" in client.get("/metrics").text
        finally:
            blocker.rollback()
            blocker.close()
        eventually(lambda: client.get("/ready").json()["request_log"]["error"] is None)
        logged = client.get("/ready").json()["request_log"]
        assert logged["pending"] == 0 and logged["written"] == 11 and logged["lost"] == 0
        assert "recsys_request_log_error 0.0" in client.get("/metrics").text
    assert logged_rows(settings.request_log_path) == 11


def test_broken_pointers_and_removed_bundles_keep_the_loaded_one_serving(tmp_path: Path, bundles) -> None:
    root = bundle_root(tmp_path, bundles)
    a, b = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    user_id = int(a.user_ids[1])
    with Server(settings_for(root, tmp_path, poll_seconds=0.1)) as client:

        def ready() -> dict:
            return client.get("/ready").json()

        def still_serving(version: str) -> None:
            response = client.get(f"/users/{user_id}/recommendations")
            assert response.status_code == 200 and response.json()["bundle_version"] == version

        (root / POINTER).write_bytes(b"\x00\xff../../etc\n")  # garbled
        assert "does not hold a bundle version" in eventually(lambda: ready()["error"])
        still_serving(a.version)
        (root / POINTER).write_text("later-bundle\n")  # dangling: no such directory yet
        assert "later-bundle refused" in eventually(
            lambda: (ready()["error"] or "").count("refused") and ready()["error"]
        )
        assert "recsys_bundle_error 1.0" in client.get("/metrics").text
        still_serving(a.version)
        shutil.copytree(bundles["b"], root / "later-bundle")  # it arrives: picked up unaided
        eventually(lambda: ready()["bundle_version"] == b.version)
        assert ready()["error"] is None
        shutil.rmtree(root / "later-bundle")  # removed while serving: served from memory
        assert "is gone" in eventually(lambda: ready()["error"])
        still_serving(b.version)
        shutil.copytree(bundles["b"], root / "later-bundle")
        eventually(lambda: ready()["error"] is None)
        assert "recsys_bundle_error 0.0" in client.get("/metrics").text


@contextmanager
def api_process(root: Path, log: Path, port: int) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "RECSYS_BUNDLE_ROOT": str(root),
        "RECSYS_REQUEST_LOG": str(log),
        "RECSYS_REQUEST_LOG_FLUSH_SECONDS": "0.2",
        "RECSYS_RATE_LIMIT_PER_SECOND": "0",
    }
    command = [sys.executable, "-m", "uvicorn", "recsys_serving.main:app", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{port}/ready"), timeout=60)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_kill_9_loses_at_most_the_flush_window_and_logging_resumes(tmp_path: Path, bundles) -> None:
    root, log, port = bundle_root(tmp_path, bundles), tmp_path / "requests.sqlite", free_port()
    url = f"http://127.0.0.1:{port}/popular"
    with api_process(root, log, port) as process:
        for _ in range(20):
            httpx.get(url)
        time.sleep(1.0)  # five flush windows: these 20 are on disk
        for _ in range(10):
            httpx.get(url)
        process.kill()  # SIGKILL: no shutdown, no drain
        process.wait(10)
    with sqlite3.connect(log) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    survived = logged_rows(log)
    assert 20 <= survived <= 30
    with api_process(root, log, port):
        for _ in range(5):
            httpx.get(url)
    assert logged_rows(log) == survived + 5  # graceful stop this time: every row
