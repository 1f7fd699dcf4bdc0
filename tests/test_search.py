"""The exact search behind a flat index (FactorModel.rank_vectors): items scanned by decreasing
norm and the scan stopped once nothing left can reach the k-th best. It must give the full scan's
answer (same rows, same order, ties to the lower row) for every kind of filter, while scanning
less than the whole catalogue when the norms allow."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from recsys_serving import models
from recsys_serving.confidence import Weighting
from recsys_serving.models import FactorModel, exact


def factor_model(n_items: int, factors: int, seed: int) -> FactorModel:
    """ALS-like factors: norms spread over two orders of magnitude (often-rated movies get long
    vectors), exact duplicates (tied scores) and a few all-zero items."""
    rng = np.random.default_rng(seed)
    item_factors = rng.normal(size=(n_items, factors)) * rng.lognormal(0.0, 1.2, size=(n_items, 1))
    item_factors[n_items // 2 : n_items // 2 + 40] = item_factors[:40]  # ties at every norm
    item_factors[-5:] = 0.0
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(factors))
    index.add_with_ids(item_factors.astype(np.float32), item_ids)
    return FactorModel(item_ids, item_factors, rng.normal(size=(3, factors)), index, Weighting(), 0.1, None)


def filters(n_items: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """All but a few items (a new user's liked movies: also given as the blocked rows), a
    genre-like half, a handful, none."""
    blocked = rng.choice(n_items, 5, replace=False)
    few_blocked = np.ones(n_items, dtype=bool)
    few_blocked[blocked] = False
    half = rng.random(n_items) < 0.5
    handful = np.zeros(n_items, dtype=bool)
    handful[rng.choice(n_items, 4, replace=False)] = True
    none = np.zeros(n_items, dtype=bool)
    return [(few_blocked, None), (few_blocked, blocked), (half, None), (handful, None), (none, None)]


@pytest.mark.parametrize(
    ("n_items", "factors", "first_block"),
    [
        (300, 16, models.FIRST_BLOCK),
        (9_000, 4, models.FIRST_BLOCK),
        (20_000, 16, models.FIRST_BLOCK),
        (3_000, 8, 8),
    ],
)
def test_pruned_scan_gives_the_full_scan_answer(
    n_items: int, factors: int, first_block: int, monkeypatch
) -> None:
    monkeypatch.setattr(models, "FIRST_BLOCK", first_block)  # small blocks: a stop decision every few items
    scanned: list[int] = []
    best_of = models._best_of
    monkeypatch.setattr(
        models, "_best_of", lambda scores, *rest: scanned.append(scores.size) or best_of(scores, *rest)
    )
    model = factor_model(n_items, factors, seed=n_items)
    rng = np.random.default_rng(1)
    top = model.item_factors[model.norm_order[0]]
    vectors = [
        rng.normal(size=factors),
        rng.normal(size=factors) * 1e-3,
        top,  # aligned with the longest item
        -top,
        np.zeros(factors),  # every score 0: all tied
        model.item_factors[n_items // 2],  # a duplicated item's own direction
        # the directions of shorter items: the best ones are found late in the scan
        *(model.item_factors[model.norm_order[int(n_items * f)]] for f in (0.05, 0.3, 0.6, 0.9)),
    ]
    cases = [
        (np.asarray(v, dtype=np.float32), k, allowed, blocked)
        for v in vectors
        for allowed, blocked in filters(n_items, rng)
        for k in (1, 10, 100)
    ]
    for vector, k, allowed, blocked in cases:
        expected = exact(model.item_factors @ vector, k, allowed)
        got = model.rank_vectors(vector[None, :], [k], [allowed], [blocked])[0]
        assert got.rows.tolist() == expected.rows.tolist()
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
    # Ranked together (one matrix product per block) as ranked alone.
    together = model.rank_vectors(
        np.stack([c[0] for c in cases]), [c[1] for c in cases], [c[2] for c in cases], [c[3] for c in cases]
    )
    for (vector, k, allowed, _), got in zip(cases, together, strict=True):
        assert got.rows.tolist() == exact(model.item_factors @ vector, k, allowed).rows.tolist()
    if n_items > first_block:
        assert min(scanned) < n_items, "no query stopped early: the pruning is not exercised"


def test_blocks_cover_every_item_once() -> None:
    for n in (0, 1, models.FIRST_BLOCK, models.FIRST_BLOCK + 1, 100_000):
        bounds = models.block_bounds(n)
        covered = np.concatenate([np.arange(a, b) for a, b in bounds]) if bounds else np.empty(0)
        assert covered.tolist() == list(range(n))
