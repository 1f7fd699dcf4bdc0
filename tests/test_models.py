"""ALS and baselines on synthetic data, confidence weighting, cold-start fold-in, FAISS index."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_assets.modeling.index import build_index, index_recall
from recsys_assets.modeling.matrices import IdMap, to_csr
from recsys_assets.modeling.recommenders import ALS, EASE, ALSParams
from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
from recsys_assets.modeling.tuning import SearchSpace, search
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.processing.splits import SplitRules, temporal_split
from recsys_assets.sources.synthetic import SyntheticConfig, generate
from recsys_serving.confidence import (
    Weighting,
    cholesky,
    confidence_matrix,
    fold_in,
    item_length_norm,
    solve_factored,
    weight_rows,
)
from recsys_serving.models import FactorModel


@pytest.fixture(scope="module")
def synthetic_splits() -> dict[str, pl.DataFrame]:
    _, ratings = generate(SyntheticConfig(n_users=800, n_movies=1500, n_ratings=60_000, seed=5))
    ratings = ratings.rename({"userId": "user_id", "movieId": "movie_id"})
    interactions, _ = build_interactions(ratings, InteractionRules())
    return temporal_split(interactions, SplitRules(strategy="leave_last_n", n=2))


SMALL_SPACE = dict(factors=(16, 32), budget_seconds=60.0, max_trials=6, baseline_trials=3, stages=3)


def test_tuned_model_beats_popularity_and_serves_the_best_validated_kind(synthetic_splits) -> None:
    plan = TrainingPlan(space=SearchSpace(**SMALL_SPACE), bootstrap_samples=300)
    model = train_and_evaluate(synthetic_splits, plan)
    served, popular = model.evaluation.get(model.kind), model.evaluation.get("most_popular")
    for metric in ("ndcg@10", "recall@10"):
        assert served.intervals[metric][0] > popular.intervals[metric][1], metric
    # Every servable kind was tuned; the served one scores best on the validation users the
    # search did not use (its own trials are scored on the other half).
    assert set(model.search.best) == set(model.selection["validation"]) == {"als", "ease", "item_knn"}
    choice = model.selection["validation"]
    assert model.kind == max(choice, key=choice.get)
    assert model.search.users + model.evaluation.users > 0
    assert choice[model.kind] != model.search.best[model.kind].score  # other users, another score
    assert len([t for t in model.trials if t.kind == "als"]) == 6
    # The refit ALS uses the best ALS trial's parameters.
    assert model.params.flat() == {**model.search.best["als"].params, "iterations": model.params.iterations}
    assert model.user_factors.shape == (len(model.ids.user_ids), model.params.factors)
    assert {r.method for r in model.evaluation.results} == {
        "als",
        "most_popular",
        "item_knn",
        "ease",
        "ease_full",
    }


def test_ease_is_skipped_with_a_reason_above_the_cap(synthetic_splits) -> None:
    plan = TrainingPlan(tune=False, ease_max_items=10, bootstrap_samples=0)
    model = train_and_evaluate(synthetic_splits, plan)
    assert "ease" in model.evaluation.skipped and "exceed the cap" in model.evaluation.skipped["ease"]
    assert {r.method for r in model.evaluation.results} == {"als", "most_popular", "item_knn"}
    assert model.kind in ("als", "item_knn") and "ease" not in model.selection["validation"]


def test_tuner_is_deterministic_for_a_seed(synthetic_splits) -> None:
    ids = IdMap.from_frame(synthetic_splits["train"])
    train, validation = to_csr(synthetic_splits["train"], ids), to_csr(synthetic_splits["validation"], ids)
    space = SearchSpace(**SMALL_SPACE, seed=3)

    def run():
        return [
            (t.kind, t.params, t.score, t.state) for t in search(train, validation, space, ALSParams()).trials
        ]

    first = run()
    assert first == run()
    assert first != [
        (t.kind, t.params, t.score, t.state)
        for t in search(train, validation, SearchSpace(**SMALL_SPACE, seed=4), ALSParams()).trials
    ]


def test_tuner_respects_its_time_budget(synthetic_splits) -> None:
    """A budget far below what the trials need ends the search within about one scoring step."""
    ids = IdMap.from_frame(synthetic_splits["train"])
    train, validation = to_csr(synthetic_splits["train"], ids), to_csr(synthetic_splits["validation"], ids)
    # Time one ALS stage (fit + scoring) at the largest size, the most a trial can overrun by.
    space = SearchSpace(factors=(256,), budget_seconds=3.0, max_trials=200, baseline_trials=200, stages=5)
    started = time.perf_counter()
    result = search(train, validation, space, ALSParams())
    elapsed = time.perf_counter() - started
    step = max(t.seconds / max(t.iterations or 1, 1) * 3 for t in result.trials if t.kind == "als")
    assert result.seconds == pytest.approx(elapsed, rel=0.2)
    assert elapsed <= space.budget_seconds + 2 * step + 1.0
    assert len(result.trials) < 200 and any(t.kind == "als" for t in result.trials)


def test_pruned_trials_stop_early_and_are_recorded(synthetic_splits) -> None:
    ids = IdMap.from_frame(synthetic_splits["train"])
    train, validation = to_csr(synthetic_splits["train"], ids), to_csr(synthetic_splits["validation"], ids)
    space = SearchSpace(factors=(8, 64), max_trials=14, stages=3, budget_seconds=120, baseline_trials=1)
    trials = [t for t in search(train, validation, space, ALSParams()).trials if t.kind == "als"]
    pruned = [t for t in trials if t.state == "pruned"]
    assert pruned, "the median pruner stopped nothing"
    assert all(t.iterations < space.iterations for t in pruned)
    assert all(t.iterations == space.iterations for t in trials if t.state == "complete")


def test_positive_solver_equals_the_general_one_and_falls_back_when_not_positive() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 8))
    definite = y.T @ y + 0.1 * np.eye(8)
    indefinite = definite - 2 * np.linalg.eigvalsh(definite).max() * np.outer(np.eye(8)[0], np.eye(8)[0])
    for a, expected_positive in ((definite, True), (indefinite, False)):
        low, positive = cholesky(a)
        assert positive == expected_positive
        for b in (rng.normal(size=(8, 1)), rng.normal(size=(8, 3))):
            got = solve_factored(low if positive else a, positive, b)
            np.testing.assert_allclose(got, np.linalg.solve(a, b), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scheme", ["linear", "log", "bm25"])
def test_confidences_follow_each_schemes_formula(scheme: str) -> None:
    """Written out entry by entry: an empty user, ordinary ones, and one so heavy that BM25's idf
    is negative (the confidence is floored at 1e-6)."""
    rng = np.random.default_rng(5)
    n_items, per_user = 12, [3, 0, 7, 40]
    indptr = np.concatenate([[0], np.cumsum(per_user)])
    indices = rng.integers(0, n_items, size=indptr[-1])
    values = rng.integers(1, 6, size=indptr[-1]).astype(np.float32)
    weighting = Weighting(scheme=scheme, alpha=3.0, epsilon=2.0, bm25_k1=1.5, bm25_b=0.75)
    norm = rng.uniform(0.5, 2.0, size=n_items).astype(np.float32)
    got = weight_rows(indptr, indices, values, n_items, weighting, norm if scheme == "bm25" else None)
    expected = []
    for user, count in enumerate(per_user):
        for at in range(indptr[user], indptr[user] + count):
            w = float(values[at])
            if scheme == "linear":
                c = 3.0 * w
            elif scheme == "log":
                c = 3.0 * math.log(1 + w / 2.0)
            else:
                idf = math.log(n_items) - math.log(1 + count)
                c = 3.0 * w * 2.5 / (1.5 * float(norm[indices[at]]) + w) * idf
            expected.append(max(c, 1e-6))
    np.testing.assert_allclose(got, np.array(expected, dtype=np.float32), rtol=1e-6)
    assert got.dtype == np.float32 and (scheme != "bm25" or (got[indptr[3] :] == np.float32(1e-6)).all())


@pytest.mark.parametrize("scheme", ["linear", "log", "bm25"])
def test_fold_in_matches_the_training_solve(scheme: str) -> None:
    """A user folded in from their history equals implicit's own exact user solve."""
    rng = np.random.default_rng(0)
    matrix = sp.random(60, 40, density=0.2, format="csr", random_state=3, dtype=np.float32)
    matrix.data[:] = rng.integers(1, 5, size=matrix.nnz)
    weighting = Weighting(scheme=scheme, alpha=2.0)
    model = ALS(ALSParams(factors=8, regularization=0.5, iterations=5, weighting=weighting))
    model.fit(matrix)
    norm = item_length_norm(matrix, weighting) if scheme == "bm25" else None
    confidence = confidence_matrix(matrix, weighting, norm)
    y = model.item_factors.astype(np.float64)
    for user in (0, 7, 31):
        row = confidence[user]
        c = row.data.astype(np.float64)
        a = y.T @ y + (y[row.indices].T * (c - 1)) @ y[row.indices] + 0.5 * np.eye(8)
        expected = np.linalg.solve(a, y[row.indices].T @ c)
        got = fold_in(model.item_factors, matrix[user].indices, matrix[user].data, 0.5, weighting, norm)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        # ALS's own user factors came from the same equations (the last user step), so fold-in of a
        # training user recommends nearly the same items.
        assert (
            np.corrcoef(got @ model.item_factors.T, model.user_factors[user] @ model.item_factors.T)[0, 1]
            > 0.9
        )


@pytest.mark.parametrize("scheme", ["linear", "bm25"])
def test_explanations_name_the_liked_item_with_the_largest_term(scheme: str) -> None:
    """score(u, i) = sum_j c_uj y_i^T W_u y_j: each recommended item is explained by the liked
    item j with the largest term, computed here with numpy from the formula."""
    rng = np.random.default_rng(6)
    n_items, factors = 80, 6
    item_factors = (rng.normal(size=(n_items, factors)) * rng.lognormal(0, 0.5, size=(n_items, 1))).astype(
        np.float32
    )
    weighting = Weighting(scheme=scheme, alpha=4.0)
    norm = rng.uniform(0.5, 2.0, size=n_items).astype(np.float32) if scheme == "bm25" else None
    ids = np.arange(n_items, dtype=np.int64)
    model = FactorModel(ids, item_factors, item_factors[:2], faiss.IndexFlatIP(factors), weighting, 0.3, norm)
    y = item_factors.astype(np.float64)
    for _ in range(30):
        # more liked items than ranked ones, and fewer: W_u is applied to the smaller side
        liked = rng.choice(n_items, int(rng.integers(1, 9)), replace=False)
        values = rng.integers(1, 5, size=liked.size).astype(np.float32)
        rows = rng.choice(n_items, int(rng.integers(1, 12)), replace=False)
        c = weight_rows(np.array([0, liked.size]), liked, values, n_items, weighting, norm).astype(np.float64)
        w_u = np.linalg.inv(y.T @ y + (y[liked].T * (c - 1)) @ y[liked] + 0.3 * np.eye(factors))
        terms = (y[rows] @ w_u @ y[liked].T) * c
        expected = [int(liked[j]) for j in np.argmax(terms, axis=1)]
        # solved again, and from the fold-in a cold start made (its factorisation reused)
        assert model.explain(rows, liked, values) == expected
        assert model.explain(rows, liked, values, model.fold(liked, values)) == expected
    # Two liked copies of one movie tie on every term: the first named wins, as numpy's argmax.
    twins = np.concatenate([item_factors, item_factors[:1]])
    model = FactorModel(
        np.arange(n_items + 1),
        twins,
        twins[:2],
        faiss.IndexFlatIP(factors),
        weighting,
        0.3,
        None if norm is None else np.append(norm, norm[0]),
    )
    for liked in ([n_items, 0, 5], [0, n_items, 5]):
        ones = np.ones(3, dtype=np.float32)
        for rows in (np.arange(10, 20), np.arange(10, 12)):
            for folded in (None, model.fold(np.array(liked), ones)):
                assert set(model.explain(rows, np.array(liked), ones, folded)) <= {liked[0], 5}


def test_flat_index_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    ids = np.sort(rng.choice(100_000, size=500, replace=False)).astype(np.int64)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    index = build_index(items, ids, kind="flat")
    _, found = index.search(queries, 10)
    expected = ids[np.argsort(-(queries @ items.T), axis=1)[:, :10]]
    np.testing.assert_array_equal(found, expected)
    assert index_recall(index, queries, items, ids, k=10) == 1.0
    restored = faiss.deserialize_index(faiss.serialize_index(index))
    np.testing.assert_array_equal(restored.search(queries, 10)[1], expected)


def test_approximate_index_recall_is_measured() -> None:
    rng = np.random.default_rng(1)
    items = rng.normal(size=(3000, 16)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64) + 1
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    good = index_recall(build_index(items, ids, kind="hnsw", hnsw_ef_search=256), queries, items, ids, 10)
    poor = index_recall(
        build_index(items, ids, kind="ivf", ivf_nlist=100, ivf_nprobe=1), queries, items, ids, 10
    )
    assert good >= 0.95 and poor < 0.9


def test_id_map_drops_unknown_ids() -> None:
    frame = pl.DataFrame({"user_id": [5, 9, 5], "movie_id": [100, 100, 7], "weight": [1.0, 2.0, 3.0]})
    ids = IdMap.from_frame(frame.head(2))
    matrix = to_csr(frame, ids)
    assert matrix.shape == (2, 1) and matrix.sum() == pytest.approx(3.0)
    assert ids.user_index(np.array([9, 4])).tolist() == [1, -1]


def test_ease_closed_form_on_a_tiny_matrix() -> None:
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.float32))
    ease = EASE(l2=1.0)
    ease.fit(x)
    gram = x.T.toarray() @ x.toarray() + np.eye(3)
    p = np.linalg.inv(gram)
    expected = np.eye(3) - p / np.diag(p)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(ease.weights, expected, rtol=1e-5, atol=1e-6)


def test_use_gpu_without_cuda_fails_saying_what_to_do() -> None:
    import implicit.gpu

    if implicit.gpu.HAS_CUDA:
        pytest.skip("CUDA is usable here: the GPU path runs instead")
    model = ALS(ALSParams(factors=4, iterations=1, use_gpu=True))
    with pytest.raises(RuntimeError, match=r"use_gpu is true.*movielens-recsys\[gpu\].*false"):
        model.fit(sp.random(20, 30, density=0.2, format="csr", random_state=0, dtype=np.float32))


def _start_and_matrix(users: int = 400, items: int = 300, factors: int = 8):
    matrix = sp.random(users, items, density=0.05, format="csr", random_state=3, dtype=np.float32)
    matrix.data[:] = 1.0
    rng = np.random.default_rng(0)
    start = (
        rng.random((users, factors), dtype=np.float32) * 0.01,
        rng.random((items, factors), dtype=np.float32) * 0.01,
    )
    return matrix, start


def test_agreement_tells_one_fit_from_another() -> None:
    """Two fits from the same start agree; a fit with another regularisation does not."""
    from recsys_assets.modeling.evaluation import agreement

    matrix, start = _start_and_matrix()
    params = ALSParams(factors=8, regularization=1.0, iterations=3)
    fits = [ALS(params), ALS(params), ALS(replace(params, regularization=30.0))]
    for model in fits:
        model.fit(matrix, start=start)
    users = np.arange(matrix.shape[0])
    same = agreement(fits[0], fits[1], users, matrix)
    assert same["relative_score_difference"] < 1e-5 and same["top_10_overlap"] == 1.0
    other = agreement(fits[0], fits[2], users, matrix)
    assert other["relative_score_difference"] > 0.1 and other["top_10_overlap"] < 0.9


def test_gpu_als_equals_the_cpu_fit_from_the_same_start() -> None:
    """Where CUDA is usable (never in CI): the GPU fit continues from given factors and lands
    where the CPU fit does (benchmarks/gpu_check.py measures the same at scale)."""
    import implicit.gpu

    if not implicit.gpu.HAS_CUDA:
        pytest.skip("no usable CUDA here (the GPU check runs on a GPU machine)")
    from recsys_assets.modeling.evaluation import agreement

    matrix, start = _start_and_matrix()
    params = ALSParams(factors=8, regularization=1.0, iterations=3)
    cpu, gpu = ALS(params), ALS(replace(params, use_gpu=True))
    for model in (cpu, gpu):
        model.fit(matrix, start=start)
    same = agreement(cpu, gpu, np.arange(matrix.shape[0]), matrix)
    assert same["relative_score_difference"] < 1e-2 and same["top_10_overlap"] > 0.95


def test_the_gpu_check_script_runs_and_without_a_gpu_says_why(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py is what a GPU machine runs, unattended: its whole protocol runs
    here against the CPU alone (--dry-run-on-cpu) and writes its results; without CUDA and without
    that flag it stops at once, saying what to install."""
    import implicit.gpu

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    output = tmp_path / "gpu_check.json"
    common = [sys.executable, str(script), "--ratings", "30000", "--compare-users", "100"]
    common += ["--workdir", str(tmp_path), "--output", str(output)]
    run = subprocess.run([*common, "--dry-run-on-cpu"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(output.read_text())
    assert result["equality"]["passed"] and result["equality"]["users"] == 100
    assert [row["factors"] for row in result["speed"]] == [ALSParams().factors]
    assert result["speed"][0]["gpu"]["iterations"] == ALSParams().iterations
    if not implicit.gpu.HAS_CUDA:
        output.unlink()
        refused = subprocess.run(common, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "gpu" in refused.stderr and "--dry-run-on-cpu" in refused.stderr
        assert not output.exists()


def test_every_method_is_evaluated_on_one_seeded_sample_of_test_users(synthetic_splits) -> None:
    """Above ``test_users``, the test evaluation takes one seeded sample, the same for every
    method: the same plan gives the same numbers, and the sample has the configured size."""
    plan = TrainingPlan(
        als=ALSParams(factors=8, iterations=3), tune=False, bootstrap_samples=50, test_users=200
    )
    first, second = train_and_evaluate(synthetic_splits, plan), train_and_evaluate(synthetic_splits, plan)
    assert first.evaluation.users == 200
    assert [r.metrics for r in first.evaluation.results] == [r.metrics for r in second.evaluation.results]
    everyone = train_and_evaluate(synthetic_splits, replace(plan, test_users=None))
    assert everyone.evaluation.users > 700


def test_search_keeps_the_best_trial_model_of_each_kind(synthetic_splits) -> None:
    """The model kept per kind is the one that scored its kind's best: scored again on the same
    users it gives the trial's score, so comparing kinds need not fit it again."""
    from recsys_assets.modeling.evaluation import evaluate

    ids = IdMap.from_frame(synthetic_splits["train"])
    train, validation = to_csr(synthetic_splits["train"], ids), to_csr(synthetic_splits["validation"], ids)
    space = SearchSpace(**{**SMALL_SPACE, "max_trials": 4})
    result = search(train, validation, space, ALSParams())
    assert set(result.fitted) == set(result.best) == {"als", "ease", "item_knn"}
    for kind, model in result.fitted.items():
        again = evaluate([model], train, validation, n_boot=0, max_users=space.max_users, seed=space.seed)
        assert again.results[0].metrics["ndcg@10"] == pytest.approx(result.best[kind].score), kind
    taken = result.take_fitted()
    assert set(taken) == {"als", "ease", "item_knn"} and result.fitted == {}


def test_the_configured_als_point_and_its_neighbouring_sizes_are_tried_first(synthetic_splits) -> None:
    ids = IdMap.from_frame(synthetic_splits["train"])
    train, validation = to_csr(synthetic_splits["train"], ids), to_csr(synthetic_splits["validation"], ids)
    base = ALSParams(factors=32, regularization=3.0, weighting=Weighting(scheme="linear", alpha=2.0))
    space = SearchSpace(**{**SMALL_SPACE, "factors": (16, 32, 64, 128), "max_trials": 4})
    als = [t for t in search(train, validation, space, base).trials if t.kind == "als"]
    # the configured point, then the same point at the neighbouring sizes, then the sampler's own
    assert [t.params["factors"] for t in als[:3]] == [32, 16, 64]
    for trial in als[:3]:
        assert trial.params["regularization"] == 3.0
        assert (trial.params["weighting_scheme"], trial.params["weighting_alpha"]) == ("linear", 2.0)
    assert als[3].params["regularization"] != 3.0


def test_als_continues_from_given_factors() -> None:
    """One iteration from a converged fit stays at that fit; one from a random start does not."""
    matrix = sp.random(300, 200, density=0.05, format="csr", random_state=1, dtype=np.float32)
    matrix.data[:] = 1.0
    params = ALSParams(factors=8, regularization=0.1, iterations=30)
    converged = ALS(params)
    converged.fit(matrix)
    scores = converged.user_factors @ converged.item_factors.T
    warm, cold = ALS(params), ALS(params)
    warm.fit(matrix, start=(converged.user_factors, converged.item_factors), iterations=1)
    cold.fit(matrix, iterations=1)

    def distance(model: ALS) -> float:
        return float(
            np.abs(model.user_factors @ model.item_factors.T - scores).mean() / np.abs(scores).mean()
        )

    assert distance(warm) < 0.02 < distance(cold)


def test_carried_rows_keep_known_ids_and_start_new_ones_small() -> None:
    from recsys_assets.modeling.training import carried_rows

    old = np.arange(12, dtype=np.float32).reshape(3, 4)
    rows = carried_rows(np.array([2, 5, 9]), old, np.array([1, 2, 9, 11]), seed=0)
    np.testing.assert_array_equal(rows[1], old[0])
    np.testing.assert_array_equal(rows[2], old[2])
    assert np.all((rows[[0, 3]] >= 0) & (rows[[0, 3]] < 0.01))


def test_warm_refit_serves_what_a_fresh_fit_would(synthetic_splits) -> None:
    """The final ALS fit continues from the train fit for a few iterations; on test it is not
    worse than a fresh fit of the full iterations beyond the interval of the difference."""
    space = SearchSpace(**{**SMALL_SPACE, "max_trials": 2})
    plans = {
        "warm": TrainingPlan(space=space, model_kind="als", bootstrap_samples=300),
        "fresh": TrainingPlan(
            space=space, model_kind="als", bootstrap_samples=300, warm_refit_iterations=None
        ),
    }
    models = {name: train_and_evaluate(synthetic_splits, plan) for name, plan in plans.items()}
    warm, fresh = (models[n].evaluation.get("als") for n in ("warm", "fresh"))
    assert models["warm"].params == models["fresh"].params
    assert not np.allclose(models["warm"].item_factors, models["fresh"].item_factors)
    assert warm.metrics["ndcg@10"] >= fresh.intervals["ndcg@10"][0]
