"""The stream simulator and drift measures."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_assets.modeling.promotion import PromotionFacts, Verdict, settle_before_comparing
from recsys_assets.sources.formats import LAYOUTS, DataFormatError, read_table
from recsys_assets.sources.synthetic import SyntheticConfig, generate, write_dataset
from recsys_assets.streaming.drift import DriftThresholds, kl_divergence, measure_drift, psi
from recsys_assets.streaming.registration import Delivered, RegistrationPlan, plan_registrations
from recsys_assets.streaming.retrain import DriftSignal, RetrainDecision, decide_retrain, window_batches
from recsys_assets.streaming.simulator import (
    SimulatorState,
    cut_batches,
    parse_day,
    parse_faults,
    simulate,
    split_history,
)

RATINGS_SPEC = LAYOUTS["csv"].ratings


@pytest.fixture(scope="module")
def synthetic() -> tuple[pl.DataFrame, pl.DataFrame]:
    movies, ratings = generate(SyntheticConfig(n_users=300, n_movies=400, n_ratings=15_000, seed=4))
    movies = movies.rename({"movieId": "movie_id"}).with_columns(pl.col("genres").str.split("|"))
    return movies, ratings.rename({"userId": "user_id", "movieId": "movie_id"})


def test_history_and_batches_partition_the_ratings(synthetic) -> None:
    _, ratings = synthetic
    cutoff = parse_day("2018-01-01")
    history, stream = split_history(ratings, cutoff)
    assert len(history) + len(stream) == len(ratings)
    assert history["timestamp"].max() < cutoff <= stream["timestamp"].min()
    batches = cut_batches(stream, cutoff, window_days=7)
    assert sum(len(b.frame) for b in batches) == len(stream)  # nothing lost, nothing twice
    assert batches[0].name == "ratings-2018-01-01_2018-01-08"
    for batch in batches:
        start, end = (parse_day(d) for d in batch.name.removeprefix("ratings-").split("_"))
        assert batch.frame.is_empty() or (
            batch.frame["timestamp"].min() >= start and batch.frame["timestamp"].max() < end
        )
    by_count = cut_batches(stream, cutoff, window_days=None, count=1000)
    assert [len(b.frame) for b in by_count[:-1]] == [1000] * (len(by_count) - 1)


def test_simulator_delivers_resumes_and_injects_faults(tmp_path: Path, synthetic) -> None:
    movies, ratings = synthetic
    incoming, state = tmp_path / "incoming", tmp_path / "simulator.json"
    said: list[str] = []
    faults = parse_faults(["malformed@2", "duplicate@3", "unknown_movies@4", "empty@5"])
    files = simulate(ratings, incoming, state, "2018-01-01", 5, faults=faults, say=said.append)
    assert [f.name for f in files][2] == files[1].stem + "-redelivered.csv"
    assert files[2].read_bytes() == files[1].read_bytes()  # byte-identical re-delivery
    assert read_table(files[0], RATINGS_SPEC).height > 0
    with pytest.raises(DataFormatError, match="four-and-a-half"):
        read_table(files[1], RATINGS_SPEC)
    spoiled = read_table(files[3], RATINGS_SPEC)
    assert not spoiled["movie_id"].is_in(movies["movie_id"].implode()).all()
    assert files[4].read_text().strip() == "userId,movieId,rating,timestamp"
    assert not [p for p in incoming.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert SimulatorState.load(state, "2018-01-01").emitted == 4  # the duplicate is not a new batch

    more = simulate(ratings, incoming, state, "2018-01-01", 2, say=said.append)
    history, stream = split_history(ratings, parse_day("2018-01-01"))
    expected = cut_batches(stream, parse_day("2018-01-01"))
    assert [p.stem for p in more] == [b.name for b in expected[4:6]]
    with pytest.raises(ValueError, match="delete it to start over"):
        simulate(ratings, incoming, state, "2017-06-01", 1, say=said.append)


def test_fault_specs_are_checked() -> None:
    assert parse_faults(["empty@3"]) == {3: "empty"}
    for bad in (["empty"], ["broken@2"], ["empty@0"]):
        with pytest.raises(ValueError, match="KIND@N"):
            parse_faults(bad)


def test_cli_uses_the_configured_cutoff(tmp_path: Path) -> None:
    directory = write_dataset(SyntheticConfig(n_users=100, n_movies=200, n_ratings=3000), tmp_path / "syn")
    env = {
        "PATH": "/usr/bin:/bin",
        "RECSYS_DATA_DIR": str(directory),
        "RECSYS_DATA_ROOT": str(tmp_path / "data"),
        "RECSYS_HISTORY_CUTOFF": "2018-06-01",
    }
    cli = Path(sys.executable).parent / "recsys-simulate"
    done = subprocess.run([str(cli), "--batches", "2"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "data" / "stream" / "incoming").iterdir())[0].startswith(
        "ratings-2018-06-01"
    )
    missing = subprocess.run(
        [str(cli)], env={**env, "RECSYS_HISTORY_CUTOFF": ""}, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "RECSYS_HISTORY_CUTOFF" in missing.stderr


def test_psi_and_kl_by_hand() -> None:
    expected, actual = np.array([50, 50]), np.array([25, 75])
    assert psi(expected, actual, smoothing=0) == pytest.approx(
        (0.25 - 0.5) * math.log(0.5) + (0.75 - 0.5) * math.log(1.5)
    )
    assert kl_divergence(actual, expected, smoothing=0) == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    )
    assert psi(expected, expected) == pytest.approx(0.0)
    # Smoothing keeps an empty bin finite and small for a small sample.
    assert 0 < psi(np.array([100, 100, 100]), np.array([2, 3, 0])) < 1


def test_drift_flags_a_shifted_batch_and_not_a_fair_one(synthetic) -> None:
    movies, ratings = synthetic
    cutoff = parse_day("2018-01-01")
    history, stream = split_history(ratings, cutoff)
    ordinary = cut_batches(stream, cutoff, window_days=182)[0].frame
    calm = measure_drift(
        history, ordinary, movies, DriftThresholds(volume_ratio=10, new_user_share=1, new_item_share=1)
    )
    assert calm.rating_psi < 0.1 and not calm.drifted, calm.reasons
    skewed = ordinary.with_columns(rating=pl.lit(0.5, pl.Float32))
    shifted = measure_drift(history, skewed, movies)
    assert shifted.rating_psi > 1 and any("rating PSI" in r for r in shifted.reasons)
    strangers = ordinary.with_columns(pl.col("user_id") + 1_000_000)
    assert measure_drift(history, strangers, movies).new_user_share == 1.0
    empty = measure_drift(history, ordinary.clear(), movies)
    assert empty.volume_ratio == 0 and any("volume" in r for r in empty.reasons)


def test_registration_plan_branches() -> None:
    a, a_copy, a_fixed = Delivered("a", "1" * 64), Delivered("a-again", "1" * 64), Delivered("a", "2" * 64)
    new, waiting = Delivered("n", "3" * 64), Delivered("w", "4" * 64)
    plan = plan_registrations(
        [a_copy, a_fixed, new, waiting, Delivered("n-copy", "3" * 64)],
        known={"1" * 64: "a"},
        registered={"a", "w"},
        ingested={},
    )
    assert plan.redelivered == [(a_copy, "a"), (Delivered("n-copy", "3" * 64), "n")]
    assert plan.register == [(a_fixed, "a-22222222"), (new, "n")]  # a corrected file gets its own name
    assert plan.waiting == [(waiting, "w")]  # registered, unknown to the (reset) cursor
    assert plan.known == {"1" * 64: "a", "2" * 64: "a-22222222", "3" * 64: "n", "4" * 64: "w"}
    # Known to the cursor under its own name: already requested, nothing to do.
    assert plan_registrations([a], {"1" * 64: "a"}, {"a"}, {}) == RegistrationPlan(known={"1" * 64: "a"})
    # The same bytes under the same name after ingestion: a re-delivery, whatever the cursor says.
    again = plan_registrations([a], {}, {"a"}, {"a": "1" * 64})
    assert again.redelivered == [(a, "a")] and not again.register and not again.waiting


def test_retrain_decision_and_drift_window_follow_registration_order() -> None:
    trained = {"zeta"}
    signals = [DriftSignal(1, "zeta", True), DriftSignal(2, "alpha", False), DriftSignal(3, "mid", True)]
    assert decide_retrain([], trained, False) == RetrainDecision([], None, "no new drift reports")
    asked = decide_retrain(signals, trained, False)
    assert asked.batches == ["mid"] and asked.cursor == 3  # zeta's request is satisfied already
    assert decide_retrain(signals, trained, True).cursor is None  # wait for the running retrain
    quiet = decide_retrain(signals[:2], trained, False)
    assert not quiet.batches and quiet.cursor == 2
    # Registered zeta, alpha, mid (names sort the other way): alpha's window holds zeta and alpha.
    registered, accepted = ["zeta", "alpha", "mid"], {"zeta", "alpha", "mid"}
    assert window_batches(registered, accepted, set(), "alpha") == ["zeta", "alpha"]
    assert window_batches(registered, accepted, {"zeta"}, "mid") == ["alpha", "mid"]
    assert window_batches(registered, accepted - {"alpha"}, set(), "mid") == ["zeta", "mid"]


def test_promotion_settles_what_needs_no_comparison() -> None:
    passed = {"raw_ratings_expectations": "passed", "faiss_index_recall": "not evaluated"}
    facts = PromotionFacts("v2", "v1", passed, champion_source="ml", challenger_source="ml")
    assert settle_before_comparing(facts) is None  # compare on the window
    failed = settle_before_comparing(replace(facts, checks={**passed, "faiss_index_recall": "failed"}))
    assert failed == Verdict(False, "a blocking check failed: faiss_index_recall")
    assert settle_before_comparing(replace(facts, champion=None)).promote
    assert not settle_before_comparing(replace(facts, champion="v2")).promote
    broken = settle_before_comparing(replace(facts, champion_problem="manifest.json missing"))
    assert broken.promote and "cannot be loaded" in broken.reason
    other = settle_before_comparing(replace(facts, challenger_source="synthetic"))
    assert not other.promote and "not comparable" in other.reason
    # A failed check outranks everything, even a missing champion.
    assert not settle_before_comparing(replace(facts, champion=None, checks={"x": "failed"})).promote
