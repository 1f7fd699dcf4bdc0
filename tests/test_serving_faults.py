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
import threading
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
def api_process(
    root: Path, log: Path, port: int, settings: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "RECSYS_BUNDLE_ROOT": str(root),
        "RECSYS_REQUEST_LOG": str(log),
        "RECSYS_REQUEST_LOG_FLUSH_SECONDS": "0.2",
        "RECSYS_RATE_LIMIT_PER_SECOND": "0",
        **(settings or {}),
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


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_soak_mixed_traffic_with_hot_swaps(tmp_path: Path, bundles) -> None:
    """Mixed valid and invalid requests from 16 threads, each from its own forwarded address, with
    the promoted bundle switched every two seconds (RECSYS_TEST_SOAK_SECONDS long, 20 by default): no
    5xx, every recommendation exactly its bundle's, memory flat (rate-limit buckets capped),
    every request that reached a logged route in the request log after a graceful stop."""
    seconds = float(os.environ.get("RECSYS_TEST_SOAK_SECONDS", "20"))
    root, log, port = bundle_root(tmp_path, bundles, "a", "b"), tmp_path / "requests.sqlite", free_port()
    engines = {name: Engine(load_bundle(bundles[name])) for name in ("a", "b")}
    users = [int(u) for u in engines["a"].user_ids[:20]]
    expected = {
        (engine.version, user): engine.item_ids[
            engine.recommend_known(engine.user_row(user), 10, NO_ROWS, [], False)[0].rows
        ].tolist()
        for engine in engines.values()
        for user in users
    }
    movie = int(engines["a"].item_ids[0])
    requests = [  # (method, path, json body, logged route)
        ("GET", "/users/{user}/recommendations", None, True),
        ("GET", "/users/{user}/recommendations?k=0", None, True),
        ("GET", "/users/abc/recommendations", None, True),
        ("GET", "/users/{user}/recommendations?genres=NoSuchGenre", None, True),
        ("POST", "/recommendations", {"liked": [movie], "k": 5}, True),
        ("POST", "/recommendations", {"liked": "not a list"}, True),
        ("POST", "/recommendations", {"liked": list(range(30_000))}, False),  # over the body limit
        ("GET", f"/movies/{movie}/similar?k=5", None, True),
        ("GET", "/popular?genre=Drama", None, True),
        ("GET", "/no/such/route", None, False),
        ("GET", "/health", None, False),
    ]
    env = {"RECSYS_TRUSTED_PROXY_HOPS": "1", "RECSYS_RATE_LIMIT_PER_SECOND": "1000"}
    env |= {"RECSYS_RATE_LIMIT_MAX_CLIENTS": "500", "RECSYS_POLL_SECONDS": "0.2"}
    results: list[tuple[str, int, dict | None, int]] = []
    with api_process(root, log, port, env) as process:
        base = f"http://127.0.0.1:{port}"
        stop = time.time() + seconds

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=base, timeout=30) as client:
                while time.time() < stop:
                    method, path, body, logged = requests[rng.integers(len(requests))]
                    user = users[rng.integers(len(users))]
                    forwarded = f"10.{rng.integers(256)}.{rng.integers(256)}.{rng.integers(256)}"
                    response = client.request(
                        method, path.format(user=user), json=body, headers={"X-Forwarded-For": forwarded}
                    )
                    parsed = response.json() if "json" in response.headers.get("content-type", "") else None
                    results.append((path.format(user=user), response.status_code, parsed, int(logged)))

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
        for thread in threads:
            thread.start()
        memory = []
        versions = [bundles["b"].name, bundles["a"].name]
        while time.time() < stop:
            time.sleep(2)
            promote(root, versions[len(memory) % 2], reason="soak swap")
            memory.append(rss_mib(process.pid))
        for thread in threads:
            thread.join()
        scraped = httpx.get(f"{base}/metrics").text
    clients = float(scraped.split("\nrecsys_rate_limit_clients ")[1].split()[0])
    assert 0 < clients <= 500 < len(results)  # each request came from its own address
    print(f"soak: {len(results)} requests in {seconds:g}s, resident MiB per swap {memory}")
    statuses = [status for _, status, _, _ in results]
    assert len(results) > 500 and max(statuses) < 500, sorted(set(statuses))
    served_versions = set()
    for path, status, body, _ in results:
        if status == 200 and path.endswith("/recommendations") and path.startswith("/users/"):
            user = int(path.split("/")[2])
            served_versions.add(body["bundle_version"])
            assert [i["movieId"] for i in body["items"]] == expected[(body["bundle_version"], user)]
    assert served_versions == {bundles["a"].name, bundles["b"].name}
    # Flat: after the first swaps have loaded both bundles, resident memory stops growing.
    assert memory[-1] - min(memory[1:]) < 40, memory
    reached_route = sum(logged for _, status, _, logged in results if status != 413)
    assert logged_rows(log) == reached_route


def start_mlflow(store: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eventually(lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout=90)
    return process


def test_mlflow_down_in_alias_mode_keeps_serving_and_recovers(
    tmp_path: Path, bundles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry server stops while the API serves its alias: the loaded bundle keeps serving,
    /ready says the registry is unreachable, and when the server is back (with the alias moved)
    the API follows unaided."""
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while it is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    store, port, name = tmp_path / "mlflow.db", free_port(), "movielens-als"
    uri = f"http://127.0.0.1:{port}"
    a, b = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    registry = start_mlflow(store, port)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model(name)
        for bundle in (a, b):
            run = client.create_run("0")
            client.create_model_version(
                name,
                source=f"{run.info.artifact_uri}/bundle",
                run_id=run.info.run_id,
                tags={"bundle_path": str(bundle.path)},
            )
        client.set_registered_model_alias(name, "champion", "1")
        settings = settings_for(
            tmp_path / "unused", tmp_path, model_alias="champion", mlflow_tracking_uri=uri, poll_seconds=0.2
        )
        with Server(settings) as api:
            assert api.get("/ready").json()["bundle_version"] == a.version
            registry.terminate()
            registry.wait(30)
            error = eventually(lambda: api.get("/ready").json()["error"], timeout=30)
            assert "cannot resolve the promoted bundle" in error
            response = api.get(f"/users/{int(a.user_ids[0])}/recommendations")
            assert response.status_code == 200 and response.json()["bundle_version"] == a.version
            registry = start_mlflow(store, port)
            client.set_registered_model_alias(name, "champion", "2")
            eventually(lambda: api.get("/ready").json()["bundle_version"] == b.version, timeout=30)
            assert api.get("/ready").json()["error"] is None
    finally:
        registry.terminate()
        registry.wait(30)
