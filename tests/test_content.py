"""Content vectors, the content model and cold items in bundles and in the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_assets.modeling.content import cold_items, estimate_factors, neighbour_weights
from recsys_assets.modeling.packaging import package_bundle
from recsys_assets.modeling.recommenders import ALSParams
from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
from recsys_assets.processing.content import ContentRules, content_vectors, year_block
from recsys_serving.bundle import BundleError, load_bundle
from recsys_serving.engine import NO_ROWS, Engine

TINY = pl.DataFrame(
    {
        "movie_id": [10, 20, 30, 40],
        "title": ["A", "B", "C", "D"],
        "year": [1995, 2000, 1995, None],
        "genres": [["Comedy", "Drama"], ["Comedy"], ["Horror"], []],
    },
    schema={"movie_id": pl.Int32, "title": pl.String, "year": pl.Int16, "genres": pl.List(pl.String)},
)
TAGS = pl.DataFrame(
    {
        "user_id": [1, 2, 3, 1, 2],
        "movie_id": [10, 10, 20, 30, 30],
        "tag": ["funny", "Funny ", "funny", "scary", "funny"],
        "timestamp": [1, 2, 3, 4, 5],
    },
    schema={"user_id": pl.Int32, "movie_id": pl.Int32, "tag": pl.String, "timestamp": pl.Int64},
)


def test_year_spreads_over_the_two_nearest_decade_centres() -> None:
    block = year_block(np.array([1995.0, 2000.0, np.nan, 1800.0]))
    centre = {int(c): i for i, c in enumerate(range(1905, 2036, 10))}
    assert block[0, centre[1995]] == 1.0 and block[0].sum() == 1.0
    assert block[1, centre[1995]] == pytest.approx(0.5) and block[1, centre[2005]] == pytest.approx(0.5)
    assert not block[2].any()  # unknown year: nothing
    assert block[3, 0] == 1.0  # before the first centre: clipped to it


def test_content_similarity_is_the_weighted_mean_of_block_cosines() -> None:
    """Hand-computed on four movies: genres, year and tags (TF-IDF, sublinear tf, smooth idf)."""
    rules = ContentRules(genre_weight=1.0, year_weight=0.5, tag_weight=1.0, min_tag_movies=1)
    vectors = content_vectors(TINY, TAGS, None, rules)
    assert vectors.movie_ids.tolist() == [10, 20, 30, 40]
    assert set(vectors.blocks) == {"genres", "year", "tags"}
    assert vectors.coverage == {"genres": 3, "year": 3, "tags": 3}
    np.testing.assert_allclose(np.linalg.norm(vectors.vectors[:3], axis=1), 1.0, rtol=1e-6)
    assert not vectors.vectors[3].any()  # nothing known of movie 40

    # Genre cosines: {Comedy, Drama} vs {Comedy} = 1/sqrt(2); vs {Horror} = 0.
    # Year cosines: 1995 vs 2000 (half on 1995, half on 2005) = 1/sqrt(2); 1995 vs 1995 = 1.
    # Tags, lower-cased and stripped: 10 = {funny: 2}, 20 = {funny: 1}, 30 = {scary: 1, funny: 1},
    # 40 = {}; smooth idf over 4 movies: idf(funny) = ln(5/4) + 1, idf(scary) = ln(5/2) + 1.
    # 10 and 20 are both pure "funny" (whatever the tf): cosine 1.
    idf_funny, idf_scary = math.log(5 / 4) + 1, math.log(5 / 2) + 1
    tags_10_30 = idf_funny / math.sqrt(idf_funny**2 + idf_scary**2)
    weights = {"genres": 1.0, "year": 0.5, "tags": 1.0}
    total = sum(weights.values())

    def expected(genre: float, year: float, tag: float) -> float:
        return (weights["genres"] * genre + weights["year"] * year + weights["tags"] * tag) / total

    similarity = vectors.vectors @ vectors.vectors.T
    assert similarity[0, 1] == pytest.approx(expected(1 / math.sqrt(2), 1 / math.sqrt(2), 1.0), abs=1e-6)
    assert similarity[0, 2] == pytest.approx(expected(0.0, 1.0, tags_10_30), abs=1e-6)
    assert similarity[1, 2] == pytest.approx(expected(0.0, 1 / math.sqrt(2), tags_10_30), abs=1e-6)


def test_a_zero_weight_leaves_a_block_out() -> None:
    vectors = content_vectors(TINY, TAGS, None, ContentRules(tag_weight=0.0, min_tag_movies=1))
    assert set(vectors.blocks) == {"genres", "year"}
    assert vectors.vectors.shape[1] == vectors.blocks["year"][1]


def test_ridge_recovers_factors_that_are_linear_in_content() -> None:
    rng = np.random.default_rng(0)
    content = rng.normal(size=(400, 12)).astype(np.float32)
    mapping = rng.normal(size=(12, 4)).astype(np.float32)
    factors = content @ mapping
    estimated = estimate_factors(content[:300], factors[:300], content[300:], l2=1e-4)
    np.testing.assert_allclose(estimated, factors[300:], atol=1e-2)
    one = estimate_factors(content[:300], factors[:300, :1], content[300:], l2=1e-4)
    assert one.shape == (100, 1)  # one factor stays a column (scikit-learn flattens one target)


def test_neighbour_weights_pick_the_nearest_warm_items_and_sum_to_one() -> None:
    warm = np.eye(4, dtype=np.float32)
    cold = np.array([[0.8, 0.6, 0, 0], [0, 0, 0, -1.0]], dtype=np.float32)
    weights = neighbour_weights(cold, warm, k=2).toarray()
    np.testing.assert_allclose(weights[0], [0.8 / 1.4, 0.6 / 1.4, 0, 0], rtol=1e-6)
    assert not weights[1].any()  # no warm item is similar at all: no weight


def test_cold_items_mark_what_each_user_rated() -> None:
    content = content_vectors(TINY, TAGS, None, ContentRules(min_tag_movies=1))
    ratings = pl.DataFrame({"user_id": [7, 7, 9, 5], "movie_id": [30, 10, 40, 30]})
    factors = np.arange(4, dtype=np.float32).reshape(2, 2)
    cold = cold_items(content, np.array([10, 20]), np.array([7, 9]), ratings, item_factors=factors)
    assert cold.movie_ids.tolist() == [30, 40]
    assert cold.seen.toarray().tolist() == [[1.0, 0.0], [0.0, 1.0]]  # user 5 is not a bundle user
    assert cold.factors is not None and cold.factors.shape == (2, 2)
    np.testing.assert_allclose(cold.content, content.vectors[[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="item factors"):
        cold_items(content, np.array([10, 20]), np.array([7, 9]), ratings)


@pytest.fixture(scope="module")
def cold_bundles(tmp_path_factory: pytest.TempPathFactory, dataset: dict) -> dict[str, Path]:
    """The serving dataset's model as bundles with and without a cold part, for ALS and EASE."""
    root = tmp_path_factory.mktemp("cold-bundles")
    content = content_vectors(dataset["movies"], dataset["tags"])
    built = {}
    for kind in ("als", "ease"):
        plan = TrainingPlan(
            als=ALSParams(factors=8, iterations=5), tune=False, bootstrap_samples=0, model_kind=kind
        )
        model = train_and_evaluate(dataset["splits"], plan, info=lambda _: None)
        for name, part in ((kind, None), (f"{kind}_cold", content)):
            built[name] = package_bundle(
                root, model, dataset["movies"], dataset["ratings"], dataset["splits"], {}, content=part
            )
    return built


@pytest.mark.parametrize("kind", ["als", "ease"])
def test_bundle_round_trip_and_warm_lists_unchanged_without_cold_slots(cold_bundles, kind: str) -> None:
    plain, cold = load_bundle(cold_bundles[kind]), load_bundle(cold_bundles[f"{kind}_cold"])
    assert plain.cold is None and cold.cold is not None
    assert cold.manifest["cold_items"] == len(cold.cold.movie_ids) > 0
    assert not set(cold.cold.movie_ids.tolist()) & set(cold.item_ids.tolist())
    assert set(cold.movies["movie_id"].to_list()) == set(cold.item_ids.tolist()) | set(
        cold.cold.movie_ids.tolist()
    )
    without, off, on = Engine(plain), Engine(cold, cold_slots=0), Engine(cold, cold_slots=2)
    liked = np.array([1, 2, 3])
    for user in range(0, len(plain.user_ids), 7):
        expected = without.recommend_user(user, 10, NO_ROWS, [], True)
        got = off.recommend_user(user, 10, NO_ROWS, [], True)
        assert got.rows.tolist() == expected.rows.tolist() and got.because == expected.because
        mixed = on.recommend_user(user, 10, NO_ROWS, [], False)
        cold_rows = mixed.rows[mixed.rows >= on.n_items]
        assert len(mixed.rows) == 10 and len(cold_rows) <= 2
        # Cold items only take the last places the warm ones would have had.
        warm_rows = mixed.rows[mixed.rows < on.n_items]
        assert warm_rows.tolist() == expected.rows[: len(warm_rows)].tolist()
        assert not set((cold_rows - on.n_items).tolist()) & set(on.cold.seen(user).tolist())
    assert (
        off.recommend_liked(liked, 8, [], False).rows.tolist()
        == without.recommend_liked(liked, 8, [], False).rows.tolist()
    )


def test_a_bundle_with_half_a_cold_part_is_refused(cold_bundles, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(cold_bundles["als_cold"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["cold_factors.npy"]
    (copy / "cold_factors.npy").unlink()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cold items need all of"):
        load_bundle(copy)


def test_cold_similar_is_content_nearest(cold_bundles) -> None:
    bundle = load_bundle(cold_bundles["ease_cold"])
    engine = Engine(bundle, cold_slots=1)
    assert bundle.cold is not None
    row = engine.n_items  # the first cold movie
    scored, strategy = engine.similar(row, 6)
    content = bundle.cold.content
    similarity = content @ content[row]
    similarity[row] = -np.inf
    assert strategy == "content"
    np.testing.assert_allclose(scored.scores, np.sort(similarity)[::-1][:6], rtol=1e-5)
    assert row not in scored.rows.tolist()
    warm, warm_strategy = engine.similar(0, 6)
    assert warm_strategy == "ease" and (warm.rows < engine.n_items).all()


def test_cold_scores_follow_the_model(cold_bundles) -> None:
    """ALS: estimated factors times the user's factors; EASE: the liked row times the estimated
    similarity columns."""
    als = load_bundle(cold_bundles["als_cold"])
    engine = Engine(als, cold_slots=1)
    assert als.cold is not None and als.cold.factors is not None and als.user_factors is not None
    np.testing.assert_allclose(
        engine.cold.scorer.user_scores(4, 5)[0], als.cold.factors @ als.user_factors[4], rtol=1e-5
    )
    ease = load_bundle(cold_bundles["ease_cold"])
    engine = Engine(ease, cold_slots=1)
    assert ease.cold is not None and ease.cold.similarity is not None
    liked = (ease.liked[4] > 0).astype(np.float32)
    expected = np.asarray((liked @ ease.cold.similarity).todense()).ravel()
    np.testing.assert_allclose(engine.cold.scorer.user_scores(4, 5)[0], expected, rtol=1e-5, atol=1e-7)
    assert sp.issparse(ease.cold.seen)


@pytest.mark.parametrize("kind", ["als", "ease"])
def test_precomputed_content_neighbours_answer_as_the_content_scan(cold_bundles, kind: str) -> None:
    """A cold movie's similar movies are sliced from the lists ranked at packaging time when k fits
    them, and scanned otherwise: the same rows and cosines either way, the movie itself left out,
    ties to the lower row."""
    bundle = load_bundle(cold_bundles[f"{kind}_cold"])
    assert bundle.cold is not None and bundle.cold.similar_rows is not None
    width = bundle.cold.similar_rows.shape[1]
    listed, scanned = Engine(bundle), Engine(bundle, use_precomputed=False)
    content = bundle.cold.content
    for row in range(listed.n_items, listed.n_items + listed.cold.n_cold):
        cosines = content @ content[row]
        cosines[row] = -np.inf
        for k in (1, 10, width, width + 5):
            got, strategy = listed.similar(row, k)
            expected, _ = scanned.similar(row, k)
            assert strategy == "content"
            order = np.lexsort((np.arange(cosines.size), -cosines))[:k]
            assert expected.rows.tolist() == order.tolist()
            # Movies with the same content tie exactly; the packaging's matrix product and this
            # scan may round them apart in the last bit, so tied movies may swap places.
            np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(cosines[got.rows], got.scores, rtol=1e-5, atol=1e-6)
            assert len(set(got.rows.tolist())) == got.rows.size and row not in got.rows.tolist()


def test_content_neighbour_lists_are_checked_when_loaded(cold_bundles, tmp_path: Path) -> None:
    import hashlib
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(cold_bundles["als_cold"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    rows = np.load(copy / "cold_similar_rows.npy")
    np.save(copy / "cold_similar_rows.npy", rows[:-1])  # one cold movie short, as a faulty writer
    manifest["files"]["cold_similar_rows.npy"] = hashlib.sha256(
        (copy / "cold_similar_rows.npy").read_bytes()
    ).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cold_similar_rows has"):
        load_bundle(copy)


@pytest.mark.parametrize("kind", ["als", "ease"])
def test_precomputed_cold_lists_answer_as_computing_them_would(cold_bundles, kind: str) -> None:
    bundle = load_bundle(cold_bundles[f"{kind}_cold"])
    assert bundle.cold is not None and bundle.cold.top_rows is not None
    listed = Engine(bundle, cold_slots=3)
    without_lists = load_bundle(cold_bundles[f"{kind}_cold"])
    assert without_lists.cold is not None
    without_lists.cold.top_rows = without_lists.cold.top_scores = None
    computed = Engine(without_lists, cold_slots=3)
    genre = listed.genre_names[0]
    cold_movies = listed.n_items + np.arange(0, listed.cold.n_cold, 3)
    for user in range(len(bundle.user_ids)):
        for exclude, genres in ((NO_ROWS, []), (cold_movies, []), (NO_ROWS, [genre])):
            got = listed.recommend_user(user, 10, exclude, genres, False)
            expected = computed.recommend_user(user, 10, exclude, genres, False)
            assert got.rows.tolist() == expected.rows.tolist(), (user, genres)
            np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5)


@pytest.mark.parametrize("kind", ["als", "ease"])
def test_a_new_users_cold_slots_are_the_best_allowed_cold_movies(cold_bundles, kind: str) -> None:
    """The cold slots of a new user's list: the best cold movies with a positive score, never one
    they said they like, and only of the asked genres."""
    engine = Engine(load_bundle(cold_bundles[f"{kind}_cold"]), cold_slots=2)
    assert engine.cold is not None
    rng = np.random.default_rng(0)
    genre = engine.genre_names[0]
    for _ in range(30):
        warm = rng.choice(engine.n_items, 3, replace=False)
        liked_cold = engine.n_items + rng.choice(engine.cold.n_cold, int(rng.integers(0, 3)), replace=False)
        known = np.unique(np.concatenate([warm, liked_cold]))
        for genres in ([], [genre]):
            got = engine.recommend_liked(known, 10, genres, False)
            query = engine.liked_query(known, 10, genres)
            scorer = engine.cold.scorer
            scores = (
                scorer.factors @ query.vector
                if scorer.factors is not None and query.vector is not None
                else scorer.liked_scores(query.liked_rows, query.values)
            )
            allowed = np.ones(engine.cold.n_cold, dtype=bool)
            allowed[liked_cold - engine.n_items] = False
            if genres:
                allowed &= engine.genre_masks[genre][engine.n_items :]
            candidates = np.flatnonzero(allowed & (scores > 0))
            best = candidates[np.lexsort((candidates, -scores[candidates]))][:2] + engine.n_items
            listed_cold = sorted(r for r in got.rows.tolist() if r >= engine.n_items)
            assert listed_cold == sorted(best.tolist())


@pytest.mark.parametrize("slots", [0, 1, 2])
def test_a_new_users_list_in_one_call_equals_the_step_by_step_path(cold_bundles, slots: int) -> None:
    """ALS behind an exact scan answers a new user in one compiled call (recsys_serving.new_users);
    it must give what the fold-in, the scans, the cold slots, the merge and the explanations give
    one step at a time: the same rows in the same order, scores and reasons, with and without a
    genre, and with the user's best cold movies among the ones they said they like."""
    engine = Engine(load_bundle(cold_bundles["als_cold"]), cold_slots=slots)
    assert engine.new_users is not None and engine.cold is not None
    rng = np.random.default_rng(7)
    compared = cold_listed = 0
    for trial in range(60):
        warm = rng.choice(engine.n_items, int(rng.integers(1, 6)), replace=False)
        genres = [] if trial % 3 else [engine.genre_names[trial % len(engine.genre_names)]]
        k = int(rng.integers(1, 25))
        first = engine.recommend_liked(np.sort(warm), k, genres, False)
        # Liking the cold movies the list showed (which leaves the fold-in as it was) must
        # move them out and the next best ones in.
        liked_cold = first.rows[first.rows >= engine.n_items]
        cold_listed += liked_cold.size
        # (cold movies alone: nothing to fold in, as the engine allows though the API falls back)
        knowns = [np.sort(warm), np.unique(np.concatenate([warm, liked_cold]))]
        if liked_cold.size:
            knowns.append(liked_cold)
        for known in knowns:
            for explain in (False, True):
                got = engine.recommend_liked(known, k, genres, explain)
                query = engine.liked_query(known, k, genres)
                expected = engine.finish_liked(query, engine.rank_liked(query), explain)
                assert got.rows.tolist() == expected.rows.tolist(), (known, genres, k)
                np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6, atol=1e-7)
                assert got.because == expected.because
                assert not set(got.rows.tolist()) & set(known.tolist())
                compared += 1
    assert compared >= 240 and (cold_listed > 20 if slots else cold_listed == 0)


def test_merging_cold_slots_keeps_score_order_with_ties_to_warm() -> None:
    """The cold candidates with a positive score take the last places, each after every item
    scoring at least as much; explanations stay with their warm items."""
    from recsys_serving.cold import merge
    from recsys_serving.models import Scored

    rng = np.random.default_rng(3)
    for _ in range(300):
        n_warm, n_cold, k = int(rng.integers(0, 8)), int(rng.integers(0, 4)), int(rng.integers(1, 9))
        values = np.array([0.0, 0.5, 1.0, 1.5, -0.5], dtype=np.float32)  # few values: many ties
        warm_scores = np.sort(rng.choice(values, n_warm))[::-1].astype(np.float32)
        cold_scores = np.sort(rng.choice(values, min(n_cold, k)))[::-1].astype(np.float32)
        warm_rows, cold_rows = np.arange(n_warm, dtype=np.int64), 100 + np.arange(cold_scores.size)
        because = [int(r) + 50 if r % 2 else None for r in warm_rows]
        for reasons in (because, None):
            got = merge(Scored(warm_rows, warm_scores, reasons), Scored(cold_rows, cold_scores), k)
            shown = [(int(r), float(v)) for r, v in zip(cold_rows, cold_scores, strict=True) if v > 0]
            if not shown:
                assert got.rows.tolist() == warm_rows.tolist()
                continue
            kept = [(int(r), float(v)) for r, v in zip(warm_rows, warm_scores, strict=True)][: k - len(shown)]
            # a stable sort by score puts each cold item after the warm ones it ties with
            expected = sorted(kept + shown, key=lambda item: -item[1])
            assert list(zip(got.rows.tolist(), got.scores.tolist(), strict=True)) == expected
            if reasons is None:
                assert got.because is None
            else:
                assert got.because == [None if r >= 100 else because[r] for r in got.rows.tolist()]


def test_the_tag_genome_block_is_centred_and_only_for_covered_movies() -> None:
    genome = pl.DataFrame(
        {
            "movie_id": [10, 10, 20, 20],
            "tag": ["dark", "funny", "dark", "funny"],
            "relevance": [0.9, 0.1, 0.1, 0.9],
        },
        schema={"movie_id": pl.Int32, "tag": pl.String, "relevance": pl.Float32},
    )
    only_genome = ContentRules(genre_weight=0, year_weight=0, tag_weight=0, genome_weight=1)
    vectors = content_vectors(TINY, None, genome, only_genome)
    assert set(vectors.blocks) == {"genome"} and vectors.coverage == {"genome": 2}
    # Centred per tag, movies 10 and 20 are opposite: cosine -1; 30 and 40 have no genome.
    assert float(vectors.vectors[0] @ vectors.vectors[1]) == pytest.approx(-1.0, abs=1e-6)
    assert not vectors.vectors[2:].any()
