"""The exact search behind a flat index (recsys_serving.search): items scanned by decreasing norm
and the scan stopped once nothing left can reach the k-th best. It must give the full scan's
answer (same rows, same order, ties to the lower row) for every kind of filter, while scanning
less than the whole catalogue when the norms allow."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from recsys_serving import search
from recsys_serving.confidence import Weighting
from recsys_serving.models import FactorModel, exact


def factor_model(n_items: int, factors: int, seed: int, duplicates: bool = True) -> FactorModel:
    """ALS-like factors: norms spread over two orders of magnitude (often-rated movies get long
    vectors), exact duplicates (tied scores) and a few all-zero items; without ``duplicates``,
    every vector distinct (the scan's path for item factors)."""
    rng = np.random.default_rng(seed)
    item_factors = rng.normal(size=(n_items, factors)) * rng.lognormal(0.0, 1.2, size=(n_items, 1))
    if duplicates:
        item_factors[n_items // 2 : n_items // 2 + 40] = item_factors[:40]  # ties at every norm
        item_factors[-5:] = 0.0
    else:
        item_factors[-1] = 0.0
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(factors))
    index.add_with_ids(item_factors.astype(np.float32), item_ids)
    return FactorModel(
        item_ids, item_factors, rng.normal(size=(3, factors)), index, Weighting("linear"), 0.1, None
    )


def scan_norms(model: FactorModel) -> np.ndarray:
    return np.linalg.norm(model.item_factors.astype(np.float64), axis=1)


Filter = tuple[np.ndarray | None, np.ndarray | None]  # (allowed mask, blocked rows)


def filters(n_items: int, rng: np.random.Generator) -> list[Filter]:
    """Masks: all but a few items, a genre-like half, a handful, none; blocked rows: a new user's
    liked movies (the first rows too: duplicated vectors in factor_model), on their own and on top
    of the half mask, every row; and no filter."""
    few_left_out = np.ones(n_items, dtype=bool)
    few_left_out[rng.choice(n_items, 5, replace=False)] = False
    half = rng.random(n_items) < 0.5
    handful = np.zeros(n_items, dtype=bool)
    handful[rng.choice(n_items, 4, replace=False)] = True
    none = np.zeros(n_items, dtype=bool)
    liked = np.unique(np.concatenate([[0, 1], rng.choice(n_items, 5, replace=False)]))
    return [
        (few_left_out, None),
        (half, None),
        (handful, None),
        (none, None),
        (None, liked),
        (half, liked[::-1]),  # in any order
        (None, np.arange(n_items)),
        (None, None),
    ]


def as_mask(n_items: int, allowed: np.ndarray | None, blocked: np.ndarray | None) -> np.ndarray | None:
    """The filter as one mask (None: every row)."""
    if blocked is None:
        return allowed
    mask = np.ones(n_items, dtype=bool) if allowed is None else allowed.copy()
    mask[blocked] = False
    return mask


@pytest.mark.parametrize("duplicates", [True, False])
@pytest.mark.parametrize(("n_items", "factors"), [(300, 16), (9_000, 4), (20_000, 16), (3_000, 32)])
def test_pruned_scan_gives_the_full_scan_answer(n_items: int, factors: int, duplicates: bool) -> None:
    model = factor_model(n_items, factors, seed=n_items, duplicates=duplicates)
    assert (model.scan.rows_at is None) == (not duplicates)  # both of the kernel's paths
    rng = np.random.default_rng(1)
    top = model.scan.vectors[0]
    vectors = [
        rng.normal(size=factors),
        rng.normal(size=factors) * 1e-3,
        top,  # aligned with the longest item
        -top,
        np.zeros(factors),  # every score 0: all tied
        model.item_factors[n_items // 2],  # a duplicated item's own direction
        # the directions of shorter items: the best ones are found late in the scan
        *(model.scan.vectors[int(len(model.scan.vectors) * f)] for f in (0.05, 0.3, 0.6, 0.9)),
    ]
    for v in vectors:
        vector = np.asarray(v, dtype=np.float32)
        true_scores = model.item_factors.astype(np.float64) @ vector
        # float32 rounding of a dot product, relative to the largest |y| |u|
        tolerance = 1e-5 * float(np.linalg.norm(vector)) * float(scan_norms(model).max()) + 1e-12
        for allowed, blocked in filters(n_items, rng):
            for k in (1, 10, 100, n_items + 1):
                expected = exact(true_scores, k, as_mask(n_items, allowed, blocked))
                rows, scores = model.scan.top_k(vector, k, allowed, blocked)
                np.testing.assert_allclose(scores, true_scores[rows], atol=tolerance, rtol=0)
                if k <= 100:  # the top of the list, ties (duplicated items) to the lower row
                    assert rows.tolist() == expected.rows.tolist()
                else:  # the whole catalogue in order: neighbours closer than rounding may swap
                    assert sorted(rows.tolist()) == sorted(expected.rows.tolist())
                    np.testing.assert_allclose(
                        true_scores[rows], true_scores[expected.rows], atol=2 * tolerance, rtol=0
                    )


def test_the_scan_stops_early_and_only_when_nothing_left_can_reach_the_kth_best() -> None:
    """The scan must read every item whose bound (|y| |u|) could still reach the final k-th best,
    most queries of ALS-like factors must stop well before the end, and most of the items it
    reads must be settled by their codes alone."""
    n_items, factors, k = 20_000, 16, 10
    model = factor_model(n_items, factors, seed=7)
    scan = model.scan
    rng = np.random.default_rng(2)
    stopped_early = all_scanned = all_scored = 0
    for _ in range(50):
        vector = rng.normal(size=factors).astype(np.float32)
        _, scores, scanned, scored = scan.top_k_scanned(vector, k)
        reach = float(np.linalg.norm(vector.astype(np.float64))) * (1 + search.MARGIN)
        in_reach = np.flatnonzero(scan.norms * reach >= scores[-1])
        assert scanned > (in_reach.max() if in_reach.size else -1)
        stopped_early += scanned < n_items // 4
        all_scanned, all_scored = all_scanned + scanned, all_scored + scored
    assert stopped_early > 25, "the bound pruned almost nothing: the scan is not early-stopping"
    assert all_scored < all_scanned / 5, "the codes settled few items: every one was read in float32"


def vector_codes(scan: search.NormOrderedScan) -> np.ndarray:
    """The scan's codes by vector (it keeps them by block, dimension-major)."""
    n, d = scan.vectors.shape
    return scan.codes.transpose(0, 2, 1).reshape(-1, d)[:n]


def quantisation_errors(scan: search.NormOrderedScan) -> np.ndarray:
    scales = np.repeat(scan.code_scales, search.BLOCK)[: len(scan.vectors), None]
    return scan.vectors.astype(np.float64) - vector_codes(scan) * scales


@pytest.mark.parametrize(("factors", "representable"), [(4, False), (16, False), (64, False), (16, True)])
def test_no_vector_scores_more_than_its_codes_and_their_slack_allow(
    factors: int, representable: bool
) -> None:
    """The screen skips a vector when its code score plus the slack is below the k-th best: the
    slack must cover every query, including one along the vector's own quantisation error (where
    the codes under-score it the most), and float32 rounding of both dot products in any order
    (all there is to cover when the codes hold a vector exactly)."""
    if representable:  # integers up to 127, one 127 per block: codes equal the vectors
        rng = np.random.default_rng(factors)
        vectors = rng.integers(-127, 128, size=(1_000, factors)).astype(np.float32)
        vectors[:, 0] = 127.0
        scan = search.NormOrderedScan(vectors)
        assert not quantisation_errors(scan).any()
    else:
        scan = factor_model(3_000, factors, seed=factors).scan
    errors = quantisation_errors(scan)
    rng = np.random.default_rng(8)
    worst_off = errors[np.argsort(-np.linalg.norm(errors, axis=1))[:20]]
    queries = [
        *rng.normal(size=(20, factors)),
        *worst_off,
        *(-worst_off),
        *(rng.normal(size=(5, factors)) * 1e3),
    ]
    blocks = np.arange(len(scan.vectors)) >> search.BLOCK_SHIFT
    vectors64 = scan.vectors.astype(np.float64)
    for query in np.asarray(queries, dtype=np.float32):
        if not query.any():
            continue
        query64 = query.astype(np.float64)
        # the most a float32 dot product of the vector can come out at, whatever its order
        highest = vectors64 @ query64 + factors * 2.0**-24 * (np.abs(vectors64) @ np.abs(query64))
        code_scores = (vector_codes(scan).astype(np.float32) @ query).astype(np.float64)
        reach = float(np.linalg.norm(query64)) * (1 + search.MARGIN)
        bound = code_scores * scan.code_scales[blocks] + scan.code_slack[blocks] * reach
        assert (bound >= highest).all()


@pytest.mark.parametrize("duplicates", [True, False])
def test_the_codes_screen_changes_no_answer(duplicates: bool) -> None:
    """Bit for bit the answer of the same scan reading every vector in float32 (an infinite
    slack lets every code score through), for every filter, on both kernel paths."""
    model = factor_model(5_000, 16, seed=9, duplicates=duplicates)
    scan = model.scan
    errors = quantisation_errors(scan)
    rng = np.random.default_rng(10)
    picks = [int(len(scan.vectors) * f) for f in (0.0, 0.05, 0.3, 0.6, 0.9)]
    queries = [
        *rng.normal(size=(10, 16)),
        *(
            scan.vectors[p] / np.linalg.norm(scan.vectors[p]) + errors[p] / np.linalg.norm(errors[p])
            for p in picks
        ),
    ]
    unscreened = np.full_like(scan.code_slack, np.inf)
    for query in np.asarray(queries, dtype=np.float32):
        for allowed, blocked in filters(5_000, rng):
            mask = search.NO_FILTER if allowed is None else allowed
            rows = search.NO_ROWS if blocked is None else np.sort(blocked)  # the kernel bisects
            for k in (1, 10, 100, 1_000):
                got = scan.top_k_scanned(query, k, allowed, blocked)
                full = search.top_k_by_norm(
                    scan.vectors, scan.block_norms, scan.rows_of, scan.rows_at, scan.codes,
                    scan.code_scales, unscreened, mask, rows, query, k,
                )  # fmt: skip
                assert got[0].tolist() == full[0].tolist()
                assert got[1].tolist() == full[1].tolist()
                assert got[2] == full[2] and full[3] == full[2]


def test_a_vector_of_another_dtype_or_layout_is_ranked_the_same() -> None:
    model = factor_model(500, 8, seed=3)
    vector = np.random.default_rng(4).normal(size=(8, 2))[:, 0]  # float64, strided
    expected = model.scan.top_k(np.ascontiguousarray(vector, dtype=np.float32), 10)
    got = model.scan.top_k(vector, 10)
    assert got[0].tolist() == expected[0].tolist()


def test_rows_sharing_a_vector_are_scored_once_and_ranked_like_any_other_rows() -> None:
    """Content-estimated factors of new movies repeat (same genres and year): each distinct
    vector is scored once, and its rows still come back one by one, ties to the lower row,
    filtered row by row."""
    rng = np.random.default_rng(5)
    distinct = rng.normal(size=(20, 8)) * rng.lognormal(0.0, 0.3, size=(20, 1))
    vectors = distinct[rng.integers(0, 20, size=300)].astype(np.float32)  # about 15 rows each
    scan = search.NormOrderedScan(vectors)
    assert len(scan.vectors) == len(np.unique(vectors, axis=0))
    # a zero query ties every row: the answer is the rows in order, across vectors
    for query in [np.zeros(8, dtype=np.float32), *rng.normal(size=(20, 8)).astype(np.float32)]:
        true_scores = vectors.astype(np.float64) @ query
        # rows left out by a mask and by a list: some of a vector's rows, and all of them
        blocked = np.unique(
            np.concatenate(
                [rng.choice(300, 30, replace=False), np.flatnonzero(vectors[:, 0] == vectors[0, 0])]
            )
        )
        for allowed, left_out in [(rng.random(300) < 0.5, None), (None, blocked), (None, None)]:
            for k in (1, 7, 40, 301):
                rows, scores = scan.top_k(query, k, allowed, left_out)
                expected = exact(true_scores, k, as_mask(300, allowed, left_out))
                # rows of one vector score the same: the order within a score is the row order
                assert rows.tolist() == expected.rows.tolist()
                tolerance = (
                    1e-5 * float(np.linalg.norm(query)) * float(np.linalg.norm(distinct, axis=1).max())
                )
                np.testing.assert_allclose(scores, true_scores[rows], atol=tolerance, rtol=0)
