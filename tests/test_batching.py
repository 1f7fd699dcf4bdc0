"""Cold starts ranked together (recsys_serving.batching): the same answers as one at a time, in
one pass over the factors when they arrive together, and no request left waiting on a failure."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving_support import Server, settings_for

from recsys_serving.batching import SearchBatcher
from recsys_serving.bundle import load_bundle
from recsys_serving.engine import Engine, LikedQuery
from recsys_serving.promotion import promote


def queries(engine: Engine, n: int, seed: int = 0) -> list[LikedQuery]:
    """Cold starts of 1-6 liked movies with assorted k, some filtered by a genre."""
    rng = np.random.default_rng(seed)
    genre = engine.genre_names[0]
    return [
        engine.liked_query(
            np.unique(rng.choice(engine.n_items, int(rng.integers(1, 7)), replace=False)),
            int(rng.choice([1, 5, 10, 40])),
            [genre] if i % 3 == 0 else [],
        )
        for i in range(n)
    ]


def test_vectors_ranked_together_equal_exact_scores_one_by_one(bundles) -> None:
    engine = Engine(load_bundle(bundles["a"]))
    model = engine.model
    batch = queries(engine, 12)
    together = model.rank_vectors(
        np.stack([q.vector for q in batch]), [q.k for q in batch], [q.allowed for q in batch]
    )
    for query, got in zip(batch, together, strict=True):
        scores = model.item_factors @ query.vector
        scores[~query.allowed] = -np.inf
        expected = np.sort(scores[np.isfinite(scores)])[::-1][: query.k]
        np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-5)
        assert query.allowed[got.rows].all() and len(set(got.rows.tolist())) == got.rows.size
        alone = engine.rank_liked(query)
        np.testing.assert_allclose(alone.scores, got.scores, rtol=1e-4, atol=1e-5)


def test_concurrent_cold_starts_are_ranked_in_one_batch_with_their_own_answers(bundles) -> None:
    engine = Engine(load_bundle(bundles["a"]))
    other = Engine(load_bundle(bundles["a"]))  # a swapped-in engine: its own model object
    sizes: list[int] = []
    batcher = SearchBatcher(sizes.append)
    batch = queries(engine, 9)

    async def together() -> list:
        return await asyncio.gather(
            *(batcher.rank_liked(engine if i < 6 else other, q) for i, q in enumerate(batch))
        )

    ranked = asyncio.run(together())
    assert sorted(sizes) == [3, 6]  # one pass per model, whatever the order they came in
    for query, got in zip(batch, ranked, strict=True):
        expected = engine.rank_liked(query)
        assert got.rows.tolist() == expected.rows.tolist()
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)


def test_a_failed_batch_answers_every_waiting_request_with_the_error(bundles) -> None:
    engine = Engine(load_bundle(bundles["a"]))
    batcher = SearchBatcher()
    batch = queries(engine, 4)
    broken = LikedQuery(**{**batch[0].__dict__, "vector": np.ones(3, dtype=np.float32)})  # wrong size

    async def together() -> list:
        return await asyncio.gather(
            *(batcher.rank_liked(engine, q) for q in [broken, *batch[1:]]), return_exceptions=True
        )

    outcome = asyncio.run(asyncio.wait_for(together(), timeout=10))
    assert all(isinstance(result, ValueError) for result in outcome)
    # and the batcher still serves afterwards
    assert asyncio.run(batcher.rank_liked(engine, batch[1])).rows.size == batch[1].k


def test_the_api_answers_concurrent_cold_starts_as_the_engine_does(tmp_path: Path, bundles) -> None:
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
    with Server(settings_for(root, tmp_path)) as client:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda body: client.post("/recommendations", json=body), bodies))
        metrics = client.get("/metrics").text
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = engine.recommend_liked(engine.catalogue_rows(body["liked"]), body["k"], [], False)
        got = [item["movieId"] for item in response.json()["items"]]
        assert got == bundle.item_ids[expected.rows].tolist()
    searched = next(line for line in metrics.splitlines() if line.startswith("recsys_search_batch_size_sum"))
    assert float(searched.split()[-1]) == pytest.approx(len(bodies))
