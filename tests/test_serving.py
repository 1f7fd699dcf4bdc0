"""The API under a real uvicorn server on loopback, on bundles built by the pipeline's own code."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import schemathesis
from fastapi import APIRouter, Request
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serving_support import (
    DROPPED_USER,
    NEGATIVE_USER,
    Server,
    settings_for,
)

from recsys_assets.modeling.index import build_index
from recsys_serving.bundle import load_bundle
from recsys_serving.engine import NO_ROWS, Engine
from recsys_serving.promotion import promote
from recsys_serving.request_log import RequestIds, RequestLog, RequestRecord
from recsys_serving.routers.direct import DirectRoute


@pytest.fixture
def served(tmp_path: Path, bundles: dict[str, Path]) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(bundles["a"], root / bundles["a"].name)
    promote(root, bundles["a"].name, reason="test")
    with Server(settings_for(root, tmp_path)) as client:
        yield client, root


def test_known_user_gets_exactly_k_unseen_items_in_als_order(served, bundles) -> None:
    client, _ = served
    bundle = load_bundle(bundles["a"])
    user_row = 3
    user_id = int(bundle.user_ids[user_row])
    response = client.get(f"/users/{user_id}/recommendations", params={"k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "als" and body["bundle_version"] == bundle.version
    got = [item["movieId"] for item in body["items"]]
    scores = bundle.user_factors[user_row] @ bundle.item_factors.T
    scores[bundle.seen[user_row].indices] = -np.inf
    expected = bundle.item_ids[np.argsort(-scores)[:10]].tolist()
    assert got == expected
    first = body["items"][0]
    assert set(first) >= {"movieId", "title", "year", "genres", "score", "rank"}
    assert [i["rank"] for i in body["items"]] == list(range(1, 11))


def test_exclude_genres_and_explanations(served, bundles) -> None:
    client, _ = served
    bundle = load_bundle(bundles["a"])
    user_id = int(bundle.user_ids[5])
    plain = client.get(f"/users/{user_id}/recommendations", params={"k": 5}).json()["items"]
    banned = [plain[0]["movieId"], plain[1]["movieId"]]
    filtered = client.get(
        f"/users/{user_id}/recommendations", params={"k": 5, "exclude": ",".join(map(str, banned))}
    ).json()["items"]
    assert len(filtered) == 5 and not {i["movieId"] for i in filtered} & set(banned)
    genre = plain[0]["genres"][0]
    only = client.get(f"/users/{user_id}/recommendations", params={"k": 5, "genres": genre}).json()["items"]
    assert len(only) == 5 and all(genre in i["genres"] for i in only)
    both = client.get(f"/users/{user_id}/recommendations", params={"k": 8, "genres": f"{genre},War"}).json()
    assert all({genre, "War"} & set(i["genres"]) for i in both["items"])
    explained = client.get(f"/users/{user_id}/recommendations", params={"k": 5, "explain": True}).json()[
        "items"
    ]
    liked_ids = set(bundle.item_ids[bundle.liked[5].indices].tolist())
    assert all(i["because"]["movieId"] in liked_ids for i in explained)


def test_unknown_user_falls_back_to_popular(served) -> None:
    client, _ = served
    body = client.get("/users/987654321/recommendations", params={"k": 4, "genres": "Drama"}).json()
    assert body["strategy"] == "popular_fallback" and len(body["items"]) == 4
    assert all("Drama" in i["genres"] for i in body["items"])
    popular = client.get("/popular", params={"k": 4, "genre": "Drama"}).json()["items"]
    assert [i["movieId"] for i in popular] == [i["movieId"] for i in body["items"]]


def test_users_the_model_dropped_never_get_movies_they_rated(served, dataset) -> None:
    """A user the k-core dropped is folded in from their positives; a user without any positive
    gets popularity; neither gets a movie they rated, and the strategy says which."""
    client, _ = served
    ratings = dataset["ratings"]
    for user, strategy in ((DROPPED_USER, "fold_in"), (NEGATIVE_USER, "popular_fallback")):
        rated = set(ratings.filter(pl.col("user_id") == user)["movie_id"].to_list())
        body = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
        assert body["strategy"] == strategy and len(body["items"]) == 10
        assert not {i["movieId"] for i in body["items"]} & rated
    popular = [i["movieId"] for i in client.get("/popular", params={"k": 13}).json()["items"]]
    negative = client.get(f"/users/{NEGATIVE_USER}/recommendations", params={"k": 10}).json()
    assert [i["movieId"] for i in negative["items"]] == popular[3:]
    for user in (-1, 0):
        response = client.get(f"/users/{user}/recommendations")
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["path", "user_id"]


def test_cold_start_folds_in_and_reports_unknown_ids(served, bundles) -> None:
    client, _ = served
    bundle = load_bundle(bundles["a"])
    liked = bundle.item_ids[bundle.liked[7].indices][:5].tolist()
    body = client.post("/recommendations", json={"liked": [*liked, 987654321], "k": 10}).json()
    assert body["strategy"] == "fold_in" and body["unknown_movie_ids"] == [987654321]
    got = [i["movieId"] for i in body["items"]]
    assert len(got) == 10 and not set(got) & set(liked)
    empty = client.post("/recommendations", json={"liked": [], "k": 3}).json()
    unknown = client.post("/recommendations", json={"liked": [-5], "k": 3}).json()
    assert empty["strategy"] == unknown["strategy"] == "popular_fallback"
    assert unknown["unknown_movie_ids"] == [-5] and len(unknown["items"]) == 3


def test_movies_similar_and_not_found(served, bundles) -> None:
    client, _ = served
    bundle = load_bundle(bundles["a"])
    movie_id = int(bundle.item_ids[0])
    movie = client.get(f"/movies/{movie_id}").json()
    assert movie["movieId"] == movie_id and movie["bundle_version"] == bundle.version
    similar = client.get(f"/movies/{movie_id}/similar", params={"k": 3}).json()["items"]
    unit = bundle.item_factors / np.linalg.norm(bundle.item_factors, axis=1, keepdims=True)
    cosine = unit @ unit[0]
    cosine[0] = -np.inf
    assert [i["movieId"] for i in similar] == bundle.item_ids[np.argsort(-cosine)[:3]].tolist()
    missing = client.get("/movies/987654321")
    assert missing.status_code == 404 and "987654321" in missing.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "names"),
    [
        ("get", "/users/1/recommendations?k=0", None, 422, "k"),
        ("get", "/users/1/recommendations?k=101", None, 422, "k"),
        ("get", "/users/abc/recommendations", None, 422, "user_id"),
        ("get", "/users/1/recommendations?genres=NoSuchGenre", None, 422, "genres"),
        ("get", "/users/1/recommendations?exclude=1,x", None, 422, "exclude"),
        ("post", "/recommendations", {"liked": list(range(501))}, 422, "liked"),
        ("post", "/recommendations", {"k": 3}, 422, "liked"),
        ("post", "/recommendations", {"liked": [1], "k": 1000}, 422, "k"),
        ("post", "/recommendations", {"liked": [1], "genres": ["NoSuchGenre"]}, 422, "genres"),
        ("post", "/recommendations", {"liked": [1], "genres": ["Drama"] * 501}, 422, "genres"),
        ("get", "/users/-1/recommendations", None, 422, "user_id"),
        ("get", "/movies/0/similar", None, 422, "movie_id"),
        ("get", "/movies/0", None, 422, "movie_id"),
        ("get", "/popular?genre=NoSuchGenre", None, 422, "genre"),
    ],
)
def test_bad_input_is_rejected_naming_the_field(served, method, path, payload, status, names) -> None:
    """Every 422 has one shape, FastAPI's: a list of {type, loc, msg, input}, loc naming the field."""
    client, _ = served
    response = client.request(method.upper(), path, json=payload)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all({"type", "loc", "msg", "input"} <= set(error) for error in detail)
    assert names in [str(part) for error in detail for part in error["loc"]]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error_type", "loc"),
    [
        (b"not json", "application/json", 422, "json_invalid", ["body"]),
        (b'{"liked": [1],}', "application/json", 422, "json_invalid", ["body"]),
        (b"\xff\xfe{}", "application/json", 422, "json_invalid", ["body"]),  # not UTF-8: was a 500
        (b"[1, 2]", "application/json", 422, "model_type", ["body"]),
        (b'{"liked": [1, "2"]}', "application/json", 422, "int_type", ["body", "liked", 1]),
        (b'{"liked": [1], "k": 3.0}', "application/json", 422, "int_type", ["body", "k"]),
        (b'{"liked": [1], "explain": 1}', "application/json", 422, "bool_type", ["body", "explain"]),
        (b'{"liked": [1], "k": 2}', None, 200, None, None),  # a client that forgets the header
        (b'{"liked": [1], "k": 2}', "text/plain", 200, None, None),
    ],
)
def test_cold_start_body_errors_name_the_problem(served, body, content_type, status, error_type, loc) -> None:
    """The cold-start route parses its own body: every error is FastAPI's 422 shape, located in
    the body, and a JSON body is read whatever the Content-Type says."""
    client, _ = served
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/recommendations", content=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert len(response.json()["items"]) == 2
        return
    (error,) = response.json()["detail"]
    assert {"type", "loc", "msg", "input"} <= set(error)
    assert (error["type"], error["loc"]) == (error_type, loc)


def test_oversized_body_is_refused_declared_or_chunked(served) -> None:
    client, _ = served
    body = b'{"liked": [' + b"1," * 40_000 + b"1]}"

    def chunked(payload: bytes) -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    headers = {"content-type": "application/json"}
    assert client.post("/recommendations", content=body, headers=headers).status_code == 413
    refused = client.post("/recommendations", content=chunked(body), headers=headers)
    assert refused.status_code == 413 and "bytes" in refused.json()["detail"]
    small = client.post("/recommendations", content=chunked(b'{"liked": [], "k": 2}'), headers=headers)
    assert small.status_code == 200 and len(small.json()["items"]) == 2


def test_metrics_and_request_log(tmp_path: Path, bundles) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(bundles["a"], root / bundles["a"].name)
    promote(root, bundles["a"].name, reason="test")
    settings = settings_for(root, tmp_path)
    with Server(settings) as client:
        for user in (1, 2, 987654321):
            assert client.get(f"/users/{user}/recommendations", params={"k": 3}).status_code == 200
        client.post("/recommendations", json={"liked": [], "k": 2})
        client.get("/users/1/recommendations?k=0")
        metrics = client.get("/metrics").text
    assert (
        'recsys_requests_total{method="GET",route="/users/{user_id}/recommendations",status="200"} 3.0'
        in metrics
    )
    assert 'route="/users/{user_id}/recommendations",status="422"' in metrics
    assert "recsys_request_latency_seconds_bucket" in metrics
    assert f'recsys_bundle_info{{version="{bundles["a"].name}"}} 1.0' in metrics
    assert 'recsys_fallbacks_total{reason="unknown_user"} 1.0' in metrics
    # The server has shut down: every logged request must be in SQLite.
    with sqlite3.connect(settings.request_log_path) as connection:
        rows = connection.execute(
            "SELECT route, user_id, cold_start, strategy, items, bundle_version, status FROM requests ORDER BY ts"
        ).fetchall()
    assert len(rows) == 5
    assert [r[6] for r in rows] == [200, 200, 200, 200, 422]
    assert rows[3][2] == 1 and rows[3][3] == "popular_fallback"
    assert len(json.loads(rows[0][4])) == 3 and rows[0][5] == bundles["a"].name


def test_request_log_keeps_the_good_rows_of_a_batch_with_a_bad_one(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log.sqlite", flush_seconds=60)  # one batch, written at close
    ids = RequestIds()
    written = []
    for user in (1, 2**70, 3):  # 2**70 does not fit SQLite's INTEGER
        record = RequestRecord(
            ids.next(), time.time(), "/r", user, False, "als", 1, [(5, 1, 0.5)], "v", 1.0, 200
        )
        written.append(record.request_id)
        log.log(record)
    log.close()
    with sqlite3.connect(tmp_path / "log.sqlite") as connection:
        stored = connection.execute("SELECT request_id, user_id FROM requests ORDER BY request_id").fetchall()
    assert stored == [(written[0], 1), (written[2], 3)]
    assert log.written == 2 and log.lost == 1 and written[1] in log.error
    assert written == sorted(written) and len(set(written)) == 3 and all(len(i) == 32 for i in written)


def request_cases(rng: np.random.Generator, n_items: int, genre: str) -> list[tuple]:
    """(k, excluded rows, genres): plain, excluded, filtered by genre, and longer than the lists."""
    exclude = rng.choice(n_items, 20, replace=False)
    return [(10, NO_ROWS, []), (20, exclude, []), (10, NO_ROWS, [genre]), (80, NO_ROWS, [])]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_precomputed_lists_and_every_index_kind_rank_like_exact_scores(bundles, kind: str) -> None:
    """Known users are answered from the bundle's precomputed lists when filters allow, else by a
    filtered index search; both must give the exact top-k of the allowed unseen items, explained
    as the model explains those items for the user's liked movies."""
    bundle = load_bundle(bundles["a"])
    n_items = len(bundle.item_ids)
    # nprobe = nlist and a wide beam make the approximate indexes exact enough to compare.
    bundle.index = build_index(
        bundle.item_factors, bundle.item_ids, kind, ivf_nlist=8, ivf_nprobe=8, hnsw_ef_search=n_items
    )
    precomputed, searched = Engine(bundle), Engine(bundle, use_precomputed=False)
    assert precomputed.top_rows is not None and searched.top_rows is None
    genre = precomputed.genre_names[0]
    rng = np.random.default_rng(0)
    for user_row in range(0, len(bundle.user_ids), 7):
        for k, excluded, genres in request_cases(rng, n_items, genre):
            scores = bundle.user_factors[user_row] @ bundle.item_factors.T
            scores[bundle.seen[user_row].indices] = -np.inf
            scores[excluded] = -np.inf
            if genres:
                scores[~precomputed.genre_masks[genre]] = -np.inf
            expected = np.sort(scores[np.isfinite(scores)])[::-1][:k]
            liked = bundle.liked[user_row]
            for engine in (precomputed, searched):
                got = engine.recommend_user(user_row, k, excluded, genres, True)
                np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-5)
                assert not set(got.rows.tolist()) & set(bundle.seen[user_row].indices.tolist())
                assert got.because == engine.model.explain(got.rows, liked.indices, liked.data)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_a_new_users_list_on_every_index_kind_is_the_exact_top_of_the_movies_they_did_not_name(
    bundles, kind: str
) -> None:
    """A cold start leaves the liked movies out inside the search (a short list on the exact
    scan, a bitmap for an approximate index): the exact top-k of the other movies, by the
    folded-in vector's scores, with and without a genre filter."""
    bundle = load_bundle(bundles["a"])
    bundle.index = build_index(
        bundle.item_factors,
        bundle.item_ids,
        kind,
        ivf_nlist=8,
        ivf_nprobe=8,
        hnsw_ef_search=len(bundle.item_ids),
    )
    engine = Engine(bundle)
    genre = engine.genre_names[0]
    rng = np.random.default_rng(3)
    for _ in range(20):
        liked = np.sort(rng.choice(len(bundle.item_ids), 5, replace=False))
        vector = engine.liked_query(liked, 10, []).vector
        for genres in ([], [genre]):
            scores = bundle.item_factors @ vector
            scores[liked] = -np.inf
            if genres:
                scores[~engine.genre_masks[genre]] = -np.inf
            expected = np.sort(scores[np.isfinite(scores)])[::-1][:10]
            got = engine.recommend_liked(liked, 10, genres, False)
            assert not set(got.rows.tolist()) & set(liked.tolist())
            np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-5)


def brute_force(bundle, inputs: np.ndarray) -> np.ndarray:
    """Scores of one input row (item weights) straight from the saved matrices."""
    if bundle.kind == "als":
        raise AssertionError("ALS is checked against its factors")
    if bundle.binary_input:
        inputs = (inputs > 0).astype(np.float32)
    return inputs @ bundle.item_similarity.toarray()


def exact_order(scores: np.ndarray, k: int) -> list[int]:
    """Highest first, ties to the lower row, only finite scores."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return [int(r) for r in order[: min(k, int(np.isfinite(scores).sum()))]]


def test_precomputed_similar_movies_rank_like_exact_cosines(bundles) -> None:
    """An ALS bundle carries each movie's most similar movies; served from them (k within the
    lists) or computed (k beyond them, or without the lists), /similar is the exact cosine top-k,
    the movie itself left out."""
    bundle = load_bundle(bundles["a"])
    assert bundle.similar_rows is not None and bundle.similar_scores is not None
    width = bundle.similar_rows.shape[1]
    unit = bundle.item_factors / np.linalg.norm(bundle.item_factors, axis=1, keepdims=True)
    precomputed, computed = Engine(bundle), Engine(bundle, use_precomputed=False)
    assert computed.similar_rows is None
    for row in range(0, len(bundle.item_ids), 5):
        cosine = unit @ unit[row]
        cosine[row] = -np.inf
        for k in (1, 10, width, width + 15):
            expected = np.sort(cosine)[::-1][:k]
            for engine in (precomputed, computed):
                got, strategy = engine.similar(row, k)
                assert strategy == "als" and row not in got.rows.tolist()
                np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(np.sum(unit[got.rows] * unit[row], axis=1), got.scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["ease", "item_knn"])
def test_item_item_kinds_serve_their_saved_matrix_exactly(bundles, kind: str) -> None:
    """Known users (precomputed and computed), filters, exact k, explanations, cold start and
    similar movies all equal brute-force scores from the bundle's own matrices."""
    bundle = load_bundle(bundles[kind])
    assert bundle.kind == kind and bundle.item_factors is None
    n_items = len(bundle.item_ids)
    precomputed, computed = Engine(bundle), Engine(bundle, use_precomputed=False)
    genre = precomputed.genre_names[0]
    similarity = bundle.item_similarity.toarray()
    rng = np.random.default_rng(0)
    for user_row in range(0, len(bundle.user_ids), 9):
        inputs = bundle.liked[user_row].toarray().ravel()
        base = brute_force(bundle, inputs)
        base[bundle.seen[user_row].indices] = -np.inf
        for k, excluded, genres in request_cases(rng, n_items, genre):
            scores = base.copy()
            scores[excluded] = -np.inf
            if genres:
                scores[~precomputed.genre_masks[genre]] = -np.inf
            expected = exact_order(scores, k)
            for engine in (precomputed, computed):
                got = engine.recommend_user(user_row, k, excluded, genres, True)
                assert got.rows.tolist() == expected
                np.testing.assert_allclose(got.scores, scores[expected], rtol=1e-4, atol=1e-6)
                liked = bundle.liked[user_row]
                values = np.ones(liked.nnz) if bundle.binary_input else liked.data
                terms = similarity[liked.indices][:, expected] * values[:, None]
                assert got.because == liked.indices[np.argmax(terms, axis=0)].tolist()
    # Cold start: the liked movies' rows of the matrix.
    liked_rows = np.array([3, 17, 40])
    value = precomputed.liked_value
    cold = np.zeros(n_items, dtype=np.float32)
    cold[liked_rows] = value
    scores = brute_force(bundle, cold)
    scores[liked_rows] = -np.inf
    got = precomputed.recommend_liked(liked_rows, 12, [], True)
    assert got.rows.tolist() == exact_order(scores, 12)
    terms = similarity[liked_rows][:, got.rows] * (1.0 if bundle.binary_input else value)
    assert got.because == liked_rows[np.argmax(terms, axis=0)].tolist()
    # Similar movies: the item's row of the matrix, itself excluded.
    row = similarity[5].copy()
    row[5] = -np.inf
    assert precomputed.similar(5, 7)[0].rows.tolist() == exact_order(row, 7)


@pytest.mark.parametrize("kind", ["ease", "item_knn"])
def test_api_serves_an_item_item_bundle(tmp_path: Path, bundles, kind: str) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(bundles[kind], root / bundles[kind].name)
    promote(root, bundles[kind].name, reason="test")
    bundle = load_bundle(bundles[kind])
    engine = Engine(bundle)
    with Server(settings_for(root, tmp_path)) as client:
        assert client.get("/ready").json()["model_kind"] == kind
        user_id = int(bundle.user_ids[4])
        body = client.get(f"/users/{user_id}/recommendations", params={"k": 6, "explain": True}).json()
        assert body["strategy"] == kind and body["model_kind"] == kind
        expected = engine.recommend_user(4, 6, NO_ROWS, [], True)
        assert [i["movieId"] for i in body["items"]] == bundle.item_ids[expected.rows].tolist()
        assert [i["because"]["movieId"] for i in body["items"]] == bundle.item_ids[expected.because].tolist()
        liked = bundle.item_ids[[1, 2, 3]].tolist()
        cold = client.post("/recommendations", json={"liked": liked, "k": 5}).json()
        assert cold["strategy"] == "fold_in" and len(cold["items"]) == 5
        assert not {i["movieId"] for i in cold["items"]} & set(liked)
        similar = client.get(f"/movies/{liked[0]}/similar", params={"k": 4}).json()["items"]
        assert [i["movieId"] for i in similar] == bundle.item_ids[engine.similar(1, 4)[0].rows].tolist()


def test_rate_limit_and_admin_key(tmp_path: Path, bundles) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(bundles["a"], root / bundles["a"].name)
    promote(root, bundles["a"].name, reason="test")
    settings = settings_for(
        root, tmp_path, rate_limit_per_second=1, rate_limit_burst=3, admin_api_key="s3cret"
    )
    with Server(settings) as client:
        statuses = [client.get("/popular").status_code for _ in range(6)]
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
        limited = client.get("/popular")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert client.get("/health").status_code == 200  # never throttled
        time.sleep(3.1)  # the bucket refills three tokens: one per admin call below
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/admin/reload", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_hot_swap_under_load_never_fails_or_mixes_bundles(tmp_path: Path, bundles) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    for bundle in bundles.values():
        shutil.copytree(bundle, root / bundle.name)
    promote(root, bundles["a"].name, reason="test")
    user_id = int(load_bundle(bundles["a"]).user_ids[2])
    expected = {}
    with Server(settings_for(root, tmp_path)) as client:
        expected[bundles["a"].name] = client.get(f"/users/{user_id}/recommendations").json()["items"]
        stop = threading.Event()
        responses: list[httpx.Response] = []

        def hammer() -> None:
            with httpx.Client(base_url=client.base_url, timeout=10) as own:
                while not stop.is_set():
                    responses.append(own.get(f"/users/{user_id}/recommendations"))

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(hammer)
            time.sleep(0.5)
            promote(root, bundles["b"].name, reason="test swap")
            assert client.post("/admin/reload").json()["changed"] is True
            time.sleep(0.5)
            stop.set()
        expected[bundles["b"].name] = client.get(f"/users/{user_id}/recommendations").json()["items"]
        assert client.get("/ready").json()["bundle_version"] == bundles["b"].name

        # A broken bundle is refused: the old one keeps serving and /ready says why.
        broken = root / "broken"
        shutil.copytree(bundles["a"], broken)
        np.save(broken / "item_factors.npy", np.zeros((3, 3), dtype=np.float32))
        promote(root, "broken", reason="test corruption")
        assert client.post("/admin/reload").json()["changed"] is False
        ready = client.get("/ready").json()
        assert ready["bundle_version"] == bundles["b"].name and "corrupted" in ready["error"]
        assert client.get(f"/users/{user_id}/recommendations").status_code == 200

    assert len(responses) > 20 and all(r.status_code == 200 for r in responses)
    versions = {r.json()["bundle_version"] for r in responses}
    assert versions == {bundles["a"].name, bundles["b"].name}
    for response in responses:
        body = response.json()
        assert body["items"] == expected[body["bundle_version"]]  # never a mix of the two


def test_no_bundle_gives_a_clear_message(tmp_path: Path) -> None:
    with Server(settings_for(tmp_path / "empty", tmp_path)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503 and "make demo" in ready.json()["message"]
        response = client.get("/users/1/recommendations")
        assert response.status_code == 503 and "make demo" in response.json()["detail"]
        assert client.get("/health").status_code == 200


def test_openapi_documents_every_route(served) -> None:
    client, _ = served
    spec = client.get("/openapi.json").json()
    assert {
        "/health",
        "/ready",
        "/users/{user_id}/recommendations",
        "/recommendations",
        "/movies/{movie_id}",
        "/movies/{movie_id}/similar",
        "/popular",
        "/metrics",
        "/admin/reload",
    } <= set(spec["paths"])
    assert "Recommendations" in spec["components"]["schemas"]


def test_serving_imports_neither_dagster_nor_the_pipeline() -> None:
    """The dependency is one-way: every module of recsys_serving imports without recsys_assets."""
    code = (
        "import importlib, pkgutil, sys, recsys_serving\n"
        "for module in pkgutil.walk_packages(recsys_serving.__path__, 'recsys_serving.'):\n"
        "    importlib.import_module(module.name)\n"
        "found = sorted({m.split('.')[0] for m in sys.modules} & {'recsys_assets', 'dagster'})\n"
        "sys.exit(', '.join(found) or 0)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_ready_reports_the_manifest(served, bundles) -> None:
    client, _ = served
    ready = client.get("/ready").json()
    bundle = load_bundle(bundles["a"])
    assert ready["ready"] and ready["bundle_version"] == bundle.version
    assert ready["users"] == len(bundle.user_ids) and ready["items"] == len(bundle.item_ids)
    assert ready["dataset"] == "synthetic test" and ready["loaded_at"]


def test_hand_built_responses_match_the_documented_models(served, bundles) -> None:
    """Hot routes skip FastAPI's response validation for speed; their bodies must still match."""
    from recsys_serving.schemas import MovieResponse, PopularMovies, Recommendations, SimilarMovies

    client, _ = served
    bundle = load_bundle(bundles["a"])
    user_id, movie_id = int(bundle.user_ids[0]), int(bundle.item_ids[0])
    for path, model in [
        (f"/users/{user_id}/recommendations?k=3&explain=true", Recommendations),
        ("/users/987654321/recommendations?k=3", Recommendations),
        (f"/movies/{movie_id}", MovieResponse),
        (f"/movies/{movie_id}/similar?k=3", SimilarMovies),
        ("/popular?k=3&genre=Drama", PopularMovies),
    ]:
        model.model_validate(client.get(path).json(), strict=True)
    cold = client.post("/recommendations", json={"liked": [movie_id], "k": 3, "explain": True}).json()
    Recommendations.model_validate(cold, strict=True)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzing_the_openapi_schema_finds_no_server_error(served, mode: GenerationMode) -> None:
    """Requests generated from the served OpenAPI schema (valid ones, then invalid ones) against a
    real server: no 5xx, and every response conforms to what the schema documents."""
    client, _ = served
    schema = schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # every route: health, ready, 2 recommendations, 3 movies, metrics, reload, 3 experiment admin
    assert len(operations) == 12

    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (
            operation.path_parameters or operation.query or operation.body
        ):
            continue  # nothing to make invalid
        # Genres come from the served bundle, so the schema cannot list them: an unknown genre is
        # a documented 422, not a schema-valid request wrongly refused.
        # Likewise an experiment whose arms share a name, or name a bundle that is not there.
        checked_beyond_schema = any(p.name in ("genre", "genres") for p in operation.query) or (
            operation.path in ("/recommendations", "/admin/experiment")
        )
        fuzz(operation, mode, [positive_data_acceptance] if checked_beyond_schema else [])


def fuzz(operation, mode: GenerationMode, excluded: list) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    run()


def test_a_direct_route_refuses_parameters_it_would_never_resolve() -> None:
    """DirectRoute calls the endpoint with the request alone: a declared parameter or dependency
    would silently never be filled, so declaring one fails when the app is built."""
    routes = APIRouter(route_class=DirectRoute)

    async def fine(request: Request) -> None: ...

    async def with_query(request: Request, k: int = 10) -> None: ...

    routes.get("/fine")(fine)
    with pytest.raises(TypeError, match="takes only the Request.*k"):
        routes.get("/k")(with_query)


def test_the_api_answers_concurrent_cold_starts_as_the_engine_does(tmp_path: Path, bundles) -> None:
    """Sixteen cold starts at once, each answered with its own list."""
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(bundles["a"], root / bundles["a"].name)
    promote(root, bundles["a"].name, reason="test")
    bundle = load_bundle(bundles["a"])
    engine = Engine(bundle)
    rng = np.random.default_rng(1)
    bodies = [
        {"liked": rng.choice(bundle.item_ids, 4, replace=False).tolist(), "k": int(rng.choice([3, 10]))}
        for _ in range(48)
    ]
    with Server(settings_for(root, tmp_path)) as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda body: client.post("/recommendations", json=body), bodies))
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = engine.recommend_liked(engine.catalogue_rows(body["liked"]), body["k"], [], False)
        got = [item["movieId"] for item in response.json()["items"]]
        assert got == bundle.item_ids[expected.rows].tolist()
