"""Online evaluation end to end: traffic replayed against a real uvicorn server running an A/B
experiment, every request logged with its arm and simulated time and evaluated by the Dagster
assets; a planted better challenger wins, a planted sample-ratio mismatch is flagged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from serving_support import Server, settings_for

from recsys_assets.defs.online import experiment_report, off_policy_estimate, replay_evaluation, serving_kpis
from recsys_assets.defs.partitions import RATING_BATCH
from recsys_assets.defs.resources import BundleStore, RequestLogStore
from recsys_assets.modeling.packaging import package_bundle
from recsys_assets.modeling.recommenders import ALSParams
from recsys_assets.modeling.training import TrainingPlan, train_and_evaluate
from recsys_assets.processing.interactions import InteractionRules, build_interactions
from recsys_assets.processing.splits import SplitRules, temporal_split
from recsys_assets.sources.formats import read_movies, read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
from recsys_assets.streaming.simulator import cut_batches, split_history
from recsys_assets.streaming.traffic import replay_traffic, visits
from recsys_serving.experiments import Arm, Experiment, start_experiment
from recsys_serving.promotion import promote


def _bundle(root: Path, ratings: pl.DataFrame, movies: pl.DataFrame, factors: int, iterations: int) -> Path:
    interactions, _ = build_interactions(ratings, InteractionRules())
    splits = temporal_split(interactions, SplitRules())
    plan = TrainingPlan(
        als=ALSParams(factors=factors, iterations=iterations),
        tune=False,
        bootstrap_samples=0,
        model_kind="als",
    )
    model = train_and_evaluate(splits, plan, info=lambda _: None)
    return package_bundle(root, model, movies, ratings, splits, {"dataset": {"source": "synthetic test"}})


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """History before a cutoff, two bundles (a champion that learnt the movies scrambled, a
    challenger that learnt them right),
    a 50/50 experiment, and the stream's users replayed against the server before their ratings."""
    work = tmp_path_factory.mktemp("online")
    data = write_dataset(
        SyntheticConfig(n_users=3000, n_movies=800, n_ratings=150_000, seed=3), work / "data"
    )
    ratings, movies = read_ratings(data), read_movies(data)
    cutoff = int(ratings["timestamp"].quantile(0.8))
    history, stream = split_history(ratings, cutoff)
    root = work / "bundles"
    # The planted worse champion learnt from the same history with the movies scrambled: for the
    # users it knows it recommends the wrong movies (both arms give unknown users popular ones).
    ids = history["movie_id"].unique().sort()
    scrambled = dict(zip(ids.to_list(), ids.shuffle(seed=1).to_list(), strict=True))
    weak = _bundle(root, history.with_columns(pl.col("movie_id").replace_strict(scrambled)), movies, 16, 10)
    strong = _bundle(root, history, movies, factors=16, iterations=10)
    promote(root, weak.name, reason="test champion")
    experiment = Experiment(
        id="exp-replay",
        arms=[
            Arm(name="control", bundle="champion", weight=1),
            Arm(name="treatment", bundle=strong.name, weight=1),
        ],
    )
    start_experiment(root, experiment)
    # One request per user and weekly batch, as recsys-replay sends them batch by batch.
    batches = cut_batches(stream, cutoff, window_days=7)
    planned = [visit for batch in batches for visit in visits(batch)]
    log_path = work / "requests.sqlite"
    with Server(settings_for(root, work, request_log=str(log_path))) as client:
        report = asyncio.run(replay_traffic(str(client.base_url), planned, k=10, concurrency=8, rate=None))
    return {
        "root": root,
        "log": log_path,
        "ratings": ratings,
        "movies": movies,
        "planned": planned,
        "batches": batches,
        "report": report,
        "experiment": experiment,
        "strong": strong.name,
        "weak": weak.name,
    }


def _materialize(
    replayed: dict, assets: list, extra: list | None = None, partition_key: str | None = None
) -> dg.ExecuteInProcessResult:
    @dg.asset(name="training_ratings")
    def training_ratings() -> pl.DataFrame:
        return replayed["ratings"]

    @dg.asset(name="raw_movies")
    def raw_movies() -> pl.DataFrame:
        return replayed["movies"]

    return dg.materialize(
        [training_ratings, raw_movies, *assets, *(extra or [])],
        resources={
            "request_log": RequestLogStore(path=str(replayed["log"])),
            "bundle_store": BundleStore(root=str(replayed["root"])),
        },
        instance=dg.DagsterInstance.ephemeral(),
        partition_key=partition_key,
    )


def test_every_replayed_request_is_logged_with_its_arm_and_simulated_time(replayed: dict) -> None:
    report, planned = replayed["report"], replayed["planned"]
    assert report.sent == len(planned) > 200 and report.answered == report.sent and not report.failed
    with sqlite3.connect(replayed["log"]) as connection:
        rows = connection.execute("SELECT user_id, arm, experiment_id, simulated_ts FROM requests").fetchall()
    assert len(rows) == report.sent  # nothing lost between the API and the log
    expected = sorted(
        (v.user_id, replayed["experiment"].assign(v.user_id).name, float(v.at)) for v in planned
    )
    assert sorted((user, arm, at) for user, arm, _, at in rows) == expected
    assert {experiment for _, _, experiment, _ in rows} == {"exp-replay"}


def test_the_better_challenger_wins_the_experiment(replayed: dict) -> None:
    result = _materialize(replayed, [replay_evaluation, experiment_report, serving_kpis, off_policy_estimate])
    assert result.success
    metrics = result.output_for_node("replay_evaluation")
    assert len(metrics) == replayed["report"].answered  # every request evaluated
    report = result.output_for_node("experiment_report")
    assert report["bundles"] == {"control": [replayed["weak"]], "treatment": [replayed["strong"]]}
    assert not report["sample_ratio_mismatch"]
    assert report["verdict"] == "treatment wins", report["explanation"]
    assert report["treatment_mean"] > report["control_mean"] and report["ci95"][0] > 0
    kpis = result.output_for_node("serving_kpis")
    assert set(kpis["arm"].to_list()) == {"control", "treatment"} and kpis["error_rate"].max() == 0.0
    # epsilon 0: nothing was explored, so there is nothing to estimate off-policy (and it says so).
    assert "no explored request" in result.output_for_node("off_policy_estimate")["note"]


def test_a_planted_sample_ratio_mismatch_invalidates_the_experiment(replayed: dict) -> None:
    """Two thirds of the treatment's requests go missing (a logging bug): the report refuses to
    call a winner."""
    result = _materialize(replayed, [replay_evaluation])
    metrics = result.output_for_node("replay_evaluation")
    treatment_users = metrics.filter(pl.col("arm") == "treatment")["user_id"].unique().sort()
    lost = set(treatment_users.to_list()[: 2 * len(treatment_users) // 3])

    @dg.asset(name="replay_evaluation")
    def broken_log() -> pl.DataFrame:
        return metrics.filter(~pl.col("user_id").is_in(lost))

    broken = _materialize(replayed, [experiment_report], [broken_log])
    report = broken.output_for_node("experiment_report")
    assert report["sample_ratio_mismatch"] and report["verdict"] == "invalid"
    assert "sample-ratio mismatch" in report["explanation"]


def test_replay_retries_and_reports_what_it_could_not_send(tmp_path: Path) -> None:
    """The API down (nothing listening) or unable to answer (503: nothing promoted): every visit
    is retried with backoff and then reported with its reason; nothing is silently dropped."""
    from serving_support import free_port

    from recsys_assets.streaming.traffic import Visit

    planned = [Visit(user_id=u, at=1_500_000_000 + u, batch="b") for u in range(1, 6)]
    down = asyncio.run(replay_traffic(f"http://127.0.0.1:{free_port()}", planned, retries=2, backoff=0.01))
    assert (down.sent, down.answered, down.retries, len(down.failed)) == (5, 0, 10, 5)
    assert all("ConnectError" in f["reason"] for f in down.failed)
    assert sorted(f["user_id"] for f in down.failed) == [1, 2, 3, 4, 5]
    root = tmp_path / "bundles"
    root.mkdir()
    with Server(settings_for(root, tmp_path)) as client:
        unready = asyncio.run(replay_traffic(str(client.base_url), planned, retries=1, backoff=0.01))
    assert unready.statuses == {"503": 10} and len(unready.failed) == 5
    assert all(f["reason"].startswith("HTTP 503") for f in unready.failed)


def test_online_evidence_promotes_the_winning_challenger(replayed: dict, tmp_path: Path) -> None:
    """promotion_decision with online_evidence: the experiment report's verdict decides, and the
    decision says which evidence it used. (Last in this module: it moves CURRENT.)"""
    from recsys_assets.defs.promotion import promotion_decision
    from recsys_assets.defs.resources import MLflowTracking
    from recsys_serving.promotion import promoted_version

    root, strong = replayed["root"], replayed["strong"]
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for version in (replayed["weak"], strong):
        registered = tracking.register_bundle(str(root / version), None, {"bundle_version": version})
    instance = dg.DagsterInstance.ephemeral()

    @dg.asset(name="training_ratings")
    def training_ratings() -> pl.DataFrame:
        return replayed["ratings"]

    @dg.asset(name="production_bundle")
    def challenger() -> dict:
        return {
            "version": strong,
            "path": str(root / strong),
            "model_version": registered,
            "mlflow_run_id": None,
        }

    @dg.asset(name="temporal_splits")
    def unused_splits() -> dict:
        return {}  # the online evidence decides before any offline comparison

    resources = {
        "request_log": RequestLogStore(path=str(replayed["log"])),
        "bundle_store": BundleStore(root=str(root)),
        "mlflow_tracking": tracking,
    }
    evaluated = dg.materialize(
        [training_ratings, replay_evaluation, experiment_report], resources=resources, instance=instance
    )
    assert evaluated.output_for_node("experiment_report")["verdict"] == "treatment wins"
    result = dg.materialize(
        [challenger, unused_splits, promotion_decision],
        resources=resources,
        instance=instance,
        run_config={"ops": {"promotion_decision": {"config": {"online_evidence": True}}}},
    )
    decision = result.output_for_node("promotion_decision")
    assert decision["evidence"] == "online" and decision["outcome"] == "promoted", decision["reason"]
    assert "online evidence (experiment exp-replay" in decision["reason"]
    assert promoted_version(root) == strong


def test_replay_evaluation_per_batch_scores_exactly_that_batch_s_requests(replayed: dict) -> None:
    """Partitioned by stream batch: each partition scores the requests replayed before its batch
    against the batch's ratings; across the partitions every request is scored once."""
    from recsys_assets.defs.online_partitions import batch_replay_evaluation
    from recsys_assets.defs.partitions import rating_batches

    by_name = {batch.name: batch.frame for batch in replayed["batches"]}

    @dg.asset(key=RATING_BATCH, partitions_def=rating_batches)
    def rating_batch(context) -> pl.DataFrame:  # no annotation: a string here (future import)
        return by_name[context.partition_key]

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(rating_batches.name, list(by_name))
    scored: list[str] = []
    for name, frame in by_name.items():
        result = dg.materialize(
            [rating_batch, batch_replay_evaluation],
            partition_key=name,
            resources={"request_log": RequestLogStore(path=str(replayed["log"]))},
            instance=instance,
        )
        metrics = result.output_for_node("batch_replay_evaluation")
        planned = [v for v in replayed["planned"] if v.batch == name]
        assert sorted(zip(metrics["user_id"], metrics["at"], strict=True)) == sorted(
            (v.user_id, float(v.at)) for v in planned
        ), name
        assert metrics["later_positives"].sum() > 0 or frame.filter(pl.col("rating") >= 4).is_empty()
        scored += metrics["request_id"].to_list()
    assert len(scored) == len(set(scored)) == replayed["report"].answered


def test_daily_serving_kpis_count_the_day_s_requests(replayed: dict) -> None:
    """Partitioned by UTC day of arrival: today's partition holds every request replayed today,
    the day before holds none."""
    from datetime import UTC, datetime, timedelta

    from recsys_assets.defs.online_partitions import daily_serving_kpis

    with sqlite3.connect(replayed["log"]) as connection:
        days = {
            datetime.fromtimestamp(ts, UTC).date().isoformat()
            for (ts,) in connection.execute("SELECT ts FROM requests")
        }
    today = max(days)
    before = (datetime.fromisoformat(min(days)) - timedelta(days=1)).date().isoformat()
    counted = {}
    for day in sorted(days) + [before]:
        result = _materialize(replayed, [daily_serving_kpis], partition_key=day)
        kpis = result.output_for_node("daily_serving_kpis")
        counted[day] = int(kpis["requests"].sum()) if len(kpis) else 0
    assert sum(counted[d] for d in days) == replayed["report"].sent and counted[before] == 0, (today, counted)
