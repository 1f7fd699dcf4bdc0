"""The real Dagster graph on an ephemeral instance: synthetic data, bad data, real MovieLens."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import pytest
from conftest import CSV_RATINGS, write_lines

from recsys_assets.definitions import all_assets, all_checks, defs
from recsys_assets.defs.modeling import ALSModelConfig, ItemIndexConfig
from recsys_assets.defs.resources import (
    AtomicFileIOManager,
    BundleStore,
    DatasetSource,
    MLflowTracking,
    RequestLogStore,
    StreamStore,
)
from recsys_serving.bundle import load_bundle
from recsys_serving.engine import NO_ROWS, Engine

ASSETS = [
    "raw_movies",
    "raw_ratings",
    "training_ratings",
    "interactions",
    "temporal_splits",
    "item_features",
    "user_features",
    "als_model",
    "faiss_index",
    "production_bundle",
    "promotion_decision",
    "raw_tags",
    "tag_genome",
    "content_features",
    "catalogue_refresh",
    "serving_kpis",
    "replay_evaluation",
    "experiment_report",
    "off_policy_estimate",
]
# The catalogue's content does not depend on the ratings: bad ratings do not stop it.
CONTENT_ASSETS = ["raw_tags", "tag_genome", "content_features"]
DOWNSTREAM_OF_RATINGS = [name for name in ASSETS[2:] if name not in CONTENT_ASSETS]
FAST_TRAINING = ALSModelConfig(
    search_factors=[16, 32], max_trials=2, baseline_trials=1, tuning_budget_seconds=60, bootstrap_samples=100
)


def run_graph(
    tmp_path: Path,
    als: ALSModelConfig = FAST_TRAINING,
    index: ItemIndexConfig | None = None,
    selection: list[str] | None = None,
    **source: object,
) -> dg.ExecuteInProcessResult:
    data_root = tmp_path / "data"
    resources = {
        "source": DatasetSource(data_root=str(data_root), allow_download=False, **source),
        "io_manager": AtomicFileIOManager(base_dir=str(data_root / "assets")),
        "mlflow_tracking": MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        "bundle_store": BundleStore(root=str(data_root / "bundles")),
        "stream": StreamStore(root=str(data_root / "stream")),
        "request_log": RequestLogStore(path=str(data_root / "request_log.sqlite")),
    }
    return dg.materialize(
        [*all_assets, *all_checks],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig(
            ops={
                name: config
                for name, config in {"als_model": als, "faiss_index": index}.items()
                if config is not None and (selection is None or name in selection)
            }
        ),
        raise_on_error=False,
        selection=selection,
    )


def mlflow_client(tmp_path: Path) -> mlflow.MlflowClient:
    return MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").client()


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.materializable_asset_keys} == set(ASSETS)
    # The stream's batches are materialised by the other code location, seen here as external.
    assert {k.to_user_string() for k in graph.external_asset_keys} == {"rating_batch"}


def test_dagster_config_defaults_are_the_pure_defaults() -> None:
    """One place owns each default: the pure rules and plans; the Dagster config mirrors them, so
    benchmarks and tests that use the rules directly train as the pipeline does."""
    from recsys_assets.defs.preparation import InteractionsConfig, SplitConfig
    from recsys_assets.defs.promotion import PromotionConfig
    from recsys_assets.modeling.comparison import PromotionRule
    from recsys_assets.modeling.training import TrainingPlan
    from recsys_assets.processing.interactions import InteractionRules
    from recsys_assets.processing.splits import SplitRules

    assert ALSModelConfig().plan() == TrainingPlan()
    assert SplitRules(**SplitConfig().model_dump()) == SplitRules()
    assert InteractionRules(**InteractionsConfig().model_dump()) == InteractionRules()
    assert PromotionConfig().rule() == PromotionRule()


def test_full_graph_on_synthetic_data(tmp_path: Path) -> None:
    result = run_graph(
        tmp_path,
        dataset="synthetic",
        synthetic_users=300,
        synthetic_movies=500,
        synthetic_ratings=20_000,
    )
    assert result.success
    metadata = materialized(result)
    assert sorted(metadata) == sorted(ASSETS)
    for name, entries in metadata.items():
        assert "synthetic" in entries["data_source"].value, name
        if name in ASSETS[:7] + ["raw_tags", "content_features"]:
            assert entries["dagster/row_count"].value > 0, name
    assert all(evaluation.passed for evaluation in checks(result).values())
    assert set(checks(result)) == {
        "raw_ratings_expectations",
        "interactions_expectations_check",
        "faiss_index_recall",
    }

    assets_dir = tmp_path / "data" / "assets"
    ratings = pl.read_parquet(assets_dir / "raw_ratings.parquet")
    assert metadata["raw_ratings"]["dagster/row_count"].value == len(ratings)
    splits = {p.stem: pl.read_parquet(p) for p in (assets_dir / "temporal_splits").glob("*.parquet")}
    assert set(splits) == {"train", "validation", "test"}
    interactions = pl.read_parquet(assets_dir / "interactions.parquet")
    assert sum(len(f) for f in splits.values()) == len(interactions)
    assert metadata["temporal_splits"]["test_interactions"].value == len(splits["test"])
    items = pl.read_parquet(assets_dir / "item_features.parquet")
    assert len(items) == len(pl.read_parquet(assets_dir / "raw_movies.parquet"))
    assert not list(assets_dir.glob(".*")), "temporary files left behind"

    # Training: every kind tuned and tested, the best on validation served, tracked in MLflow,
    # the bundle registered as challenger.
    model_meta = metadata["als_model"]
    served_kind = model_meta["served_kind"].value
    validation = {k: model_meta[f"validation_{k}_ndcg@10"].value for k in ("als", "ease", "item_knn")}
    assert served_kind == max(validation, key=validation.get)
    assert model_meta["served_ndcg@10"].value == model_meta[f"{served_kind}_ndcg@10"].value
    assert model_meta["served_ndcg@10"].value > model_meta["most_popular_ndcg@10"].value
    assert "item_knn" in model_meta["test_metrics"].value and "ease_full" in model_meta["test_metrics"].value
    assert "data:image/png;base64" in model_meta["ndcg_chart"].value
    assert model_meta["tuning_trials"].value == 4 and model_meta["tuning_budget_seconds"].value == 60
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("movielens-recsys").experiment_id])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}  # parent + 4 trials
    trial_kinds = sorted(r.data.tags["model_kind"] for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert trial_kinds == ["als", "als", "ease", "item_knn"]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["dagster.run_id"] == result.run_id
    assert parent.data.tags["dagster.asset_key"] == "als_model"
    assert (
        "test_als_ndcg_at_10" in parent.data.metrics and "test_most_popular_ndcg_at_10" in parent.data.metrics
    )
    version = client.get_model_version_by_alias("movielens-als", "challenger")
    bundle_meta = metadata["production_bundle"]
    assert version.tags["bundle_version"] == bundle_meta["bundle_version"].value
    assert version.tags["dataset_fingerprint"] == parent.data.tags["dataset_fingerprint"]
    assert version.run_id == parent.info.run_id
    bundle = load_bundle(Path(bundle_meta["bundle_path"].value))
    assert bundle.kind == served_kind == version.tags["model_kind"] == parent.data.tags["model_kind"]
    assert bundle.manifest["mlflow_run_id"] == parent.info.run_id
    assert bundle.manifest["dataset"]["fingerprint"] == version.tags["dataset_fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "bundle")}
    assert "bundle/manifest.json" in artifacts
    # No champion existed: the decision promotes the first bundle and says why, in MLflow too.
    decision = metadata["promotion_decision"]
    assert decision["outcome"].value == "promoted"
    assert decision["champion_after"].value == bundle_meta["bundle_version"].value
    assert client.get_model_version_by_alias("movielens-als", "champion").version == version.version
    # Every movie the model does not score is in the bundle as a cold item; the refresh that runs
    # last finds the catalogue current.
    assert bundle.cold is not None
    assert len(bundle.cold.movie_ids) == bundle_meta["cold_items"].value > 0
    catalogue = set(pl.read_parquet(assets_dir / "raw_movies.parquet")["movie_id"].to_list())
    assert set(bundle.item_ids.tolist()) | set(bundle.cold.movie_ids.tolist()) == catalogue
    assert metadata["catalogue_refresh"]["outcome"].value == "skipped"
    assert (
        client.get_model_version("movielens-als", version.version).tags["promotion.reason"]
        == decision["reason"].value
    )


def test_failed_training_leaves_no_mlflow_run_running(tmp_path: Path) -> None:
    broken = ALSModelConfig(**{**FAST_TRAINING.model_dump(), "primary_metric": "no_such_metric@10"})
    result = run_graph(
        tmp_path,
        als=broken,
        dataset="synthetic",
        synthetic_users=200,
        synthetic_movies=300,
        synthetic_ratings=8_000,
    )
    assert not result.success
    assert [e.step_key for e in result.all_events if e.is_step_failure] == ["als_model"]
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("movielens-recsys").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parent] == ["FAILED"]
    assert all(r.info.status != "RUNNING" for r in runs)


def test_failing_blocking_check_stops_downstream(tmp_path: Path, csv_dir: Path) -> None:
    write_lines(csv_dir / "ratings.csv", [*CSV_RATINGS, "4,1,7.0,964982931", "4,999,4.0,964982931"])
    result = run_graph(tmp_path, data_dir=str(csv_dir))
    assert not result.success
    done = materialized(result)
    assert "raw_ratings" in done
    assert not set(DOWNSTREAM_OF_RATINGS) & set(done)
    evaluation = checks(result)["raw_ratings_expectations"]
    assert not evaluation.passed
    report = evaluation.metadata["report"].value
    assert "expect_column_values_to_be_in_set" in report and "999" in report and "7.0" in report
    assert evaluation.metadata["failed_expectations"].value == 3  # range, half-star step, movie id


def test_malformed_file_fails_with_file_and_line(tmp_path: Path, csv_dir: Path) -> None:
    write_lines(csv_dir / "ratings.csv", [*CSV_RATINGS[:3], "2,1", *CSV_RATINGS[3:]])
    result = run_graph(tmp_path, data_dir=str(csv_dir))
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["raw_ratings"]
    error = failures[0].step_failure_data.error
    text = error.message + (error.cause.message if error.cause else "")
    assert "ratings.csv" in text and "line 4" in text and "truncated" in text
    assert not set(DOWNSTREAM_OF_RATINGS) & set(materialized(result))


def assert_served_model_is_the_best(tmp_path: Path, metadata: dict) -> None:
    """The quality bar, with the default (tuned) training: the served kind's test NDCG@10 and
    Recall@10 are not below the lower 95% bound of any other method the run evaluated (the
    baselines, the other kinds, EASE's unpruned matrix), and the bundle says which kind it holds."""
    model = pickle.loads((tmp_path / "data" / "assets" / "als_model.pickle").read_bytes())
    served = model.evaluation.get(model.kind)
    for rival in model.evaluation.results:
        for metric in ("ndcg@10", "recall@10"):
            assert served.metrics[metric] >= rival.intervals[metric][0], (rival.method, metric)
    popular = model.evaluation.get("most_popular")
    for metric in ("ndcg@10", "recall@10"):
        assert served.intervals[metric][0] > popular.intervals[metric][1], metric
    bundle = load_bundle(Path(metadata["production_bundle"]["bundle_path"].value))
    assert bundle.kind == model.kind == bundle.manifest["model"]["kind"]
    assert bundle.manifest["model"]["selection"]["test_check"]["confirmed"]
    assert metadata["als_model"]["served_kind"].value == model.kind


def test_ml_latest_small_counts_and_quality(tmp_path: Path, ml_latest_small: Path) -> None:
    result = run_graph(tmp_path, als=ALSModelConfig(), data_dir=str(ml_latest_small))
    assert result.success
    metadata = materialized(result)
    assert metadata["raw_ratings"]["dagster/row_count"].value == 100_836
    assert metadata["raw_ratings"]["users"].value == 610
    assert metadata["raw_movies"]["dagster/row_count"].value == 9_742
    assert "ml-latest-small" in metadata["interactions"]["data_source"].value
    assert all(evaluation.passed for evaluation in checks(result).values())
    assert_served_model_is_the_best(tmp_path, metadata)
    assert_every_rater_is_served_unseen_movies(metadata, ml_latest_small)


def assert_every_rater_is_served_unseen_movies(metadata: dict, directory: Path) -> None:
    """Every user of ratings.csv is known to the bundle (610, where the model holds 601) and never
    gets a movie they rated; a user with a positive in the catalogue gets a personalised list."""
    engine = Engine(load_bundle(Path(metadata["production_bundle"]["bundle_path"].value)))
    ratings = pl.read_csv(directory / "ratings.csv")
    assert len(engine.user_ids) == ratings["userId"].n_unique() == 610
    catalogue = engine.item_ids.tolist()
    per_user = ratings.group_by("userId").agg(
        "movieId", positives=((pl.col("rating") >= 4) & pl.col("movieId").is_in(catalogue)).sum()
    )
    strategies = {}
    for user, rated, positives in per_user.iter_rows():
        scored, strategy = engine.recommend_known(engine.user_row(user), 10, NO_ROWS, [], False)
        assert len(scored.rows) == 10 and not set(engine.item_ids[scored.rows].tolist()) & set(rated)
        assert (strategy == "popular_fallback") == (positives == 0), user
        strategies[user] = strategy
    assert strategies[3] == strategies[54] == "fold_in"  # the k-core dropped both


def test_synthetic_default_quality(tmp_path: Path) -> None:
    """The embedded default data at its default size, with the default training."""
    result = run_graph(tmp_path, als=ALSModelConfig(), dataset="synthetic")
    assert result.success
    assert_served_model_is_the_best(tmp_path, materialized(result))


def test_pure_modules_and_serving_do_not_import_dagster() -> None:
    code = (
        "import sys, recsys_serving, recsys_assets.settings, recsys_assets.sources.resolve, "
        "recsys_assets.processing.features, recsys_assets.processing.splits; "
        "sys.exit('dagster' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("command", "cwd"),
    [
        (["dagster", "asset", "materialize", "-m", "recsys_assets.definitions", "--select", "*"], "anywhere"),
        (["dg", "launch", "--assets", "*"], "root"),  # dg finds the project from the repository root
    ],
)
def test_cli_materialize_all(tmp_path: Path, command: list[str], cwd: str) -> None:
    """The README's main command, through the real CLI (dagster, and Dagster's newer dg) and a
    real DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        (Path(__file__).parents[1] / "dagster_home" / "dagster.yaml").read_text()
    )
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "DAGSTER_HOME": str(home),
        "RECSYS_DATASET": "synthetic",
        "RECSYS_DATA_ROOT": str(tmp_path / "data"),
        "RECSYS_SYNTHETIC_RATINGS": "10000",
        "RECSYS_SYNTHETIC_USERS": "200",
        "RECSYS_SYNTHETIC_MOVIES": "400",
        "RECSYS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    completed = subprocess.run(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path if cwd == "anywhere" else Path(__file__).parents[1],  # paths never depend on it
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "data" / "assets" / "user_features.parquet").is_file()
    bundles = [p for p in (tmp_path / "data" / "bundles").iterdir() if p.is_dir()]
    assert len(bundles) == 1
    # The first bundle ever built is promoted: the pointer names it.
    assert (tmp_path / "data" / "bundles" / "CURRENT").read_text().strip() == bundles[0].name
    assert (home / "history" / "runs.db").is_file() or any(home.rglob("*.db"))


def test_demo_command_builds_serves_and_stops_on_one_ctrl_c(tmp_path: Path) -> None:
    """`make demo`'s launcher: materialise, promote, run API + Dagster UI, one SIGINT stops both,
    even started with SIGINT ignored (a background job of a non-interactive shell)."""
    import signal
    import socket
    import time

    import httpx

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        (Path(__file__).parents[1] / "dagster_home" / "dagster.yaml").read_text()
    )
    api_port, ui_port = free_port(), free_port()
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(home),
        "RECSYS_DATASET": "synthetic",
        "RECSYS_DATA_ROOT": str(tmp_path / "data"),
        "RECSYS_SYNTHETIC_RATINGS": "8000",
        "RECSYS_SYNTHETIC_USERS": "200",
        "RECSYS_SYNTHETIC_MOVIES": "300",
        "RECSYS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    launcher = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "recsys-demo"),
            "--api-port",
            str(api_port),
            "--ui-port",
            str(ui_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started as a script's background job would start it: SIGINT inherited ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.time() + 240
        api_ready = ui_up = False
        while time.time() < deadline and not (api_ready and ui_up):
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            try:
                api_ready = httpx.get(f"http://127.0.0.1:{api_port}/ready", timeout=2).status_code == 200
                ui_up = httpx.get(f"http://127.0.0.1:{ui_port}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert api_ready and ui_up
        recommendation = httpx.get(f"http://127.0.0.1:{api_port}/users/1/recommendations?k=3").json()
        assert len(recommendation["items"]) == 3
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            output, _ = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            # SIGINT did not stop it: SIGTERM still makes the launcher stop its services, so a
            # failing run leaves no API or Dagster UI behind.
            launcher.terminate()
            launcher.communicate(timeout=60)
            raise
    assert launcher.returncode == 0, output[-3000:]
    assert "curl" in output and f"127.0.0.1:{ui_port}" in output
    # The terminal holds progress and the banner; Dagster's own log lines go to the log file.
    assert "done   production_bundle" in output and "STEP_START" not in output
    log = (tmp_path / "data" / "logs" / "materialize.log").read_text()
    assert "STEP_SUCCESS" in log and "production_bundle" in log
    # The sample cold-start request names movies of the served bundle (its most popular three).
    bundle = next(p for p in (tmp_path / "data" / "bundles").iterdir() if (p / "popularity.json").is_file())
    liked = json.loads((bundle / "popularity.json").read_text())["overall"][:3]
    assert f'"liked": {json.dumps(liked)}' in output
    for port in (api_port, ui_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after Ctrl-C"


@pytest.mark.parametrize(("cutoff", "kept"), [("2000-07-30", 0), ("2000-07-31", 5)])
def test_raw_ratings_keep_only_history_before_the_cutoff(
    tmp_path: Path, csv_dir: Path, cutoff: str, kept: int
) -> None:
    from recsys_assets.defs.ingestion import raw_ratings

    result = dg.materialize(
        [raw_ratings],
        resources={
            "source": DatasetSource(data_root=str(tmp_path), data_dir=str(csv_dir), history_cutoff=cutoff),
            "io_manager": AtomicFileIOManager(base_dir=str(tmp_path / "assets")),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    ratings = pl.read_parquet(tmp_path / "assets" / "raw_ratings.parquet")
    # CSV_RATINGS hold five ratings, all on 2000-07-30 (UTC).
    assert len(ratings) == kept
    metadata = materialized(result)["raw_ratings"]
    assert metadata["ratings_held_back_for_streaming"].value == 5 - kept
    assert metadata["history_cutoff"].value == cutoff


def test_rebuild_promotes_the_new_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`recsys-demo --rebuild` serves what it built: pointer and champion alias move to it."""
    from recsys_assets.launcher import promote_new_bundle
    from recsys_assets.settings import Settings
    from recsys_serving.promotion import promote, promoted_version

    root = tmp_path / "bundles"
    for version in ("20260101T000000Z-aaaaaaaa", "20260202T000000Z-bbbbbbbb"):
        (root / version).mkdir(parents=True)
        (root / version / "manifest.json").write_text("{}")
    promote(root, "20260101T000000Z-aaaaaaaa", reason="first")
    tracking = MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracking.client()
    client.create_registered_model("movielens-als")
    for version in ("20260101T000000Z-aaaaaaaa", "20260202T000000Z-bbbbbbbb"):
        client.create_model_version(
            "movielens-als",
            source=str(root / version),
            tags={"bundle_version": version, "promotion.reason": "not comparable: other data"},
        )
    settings = Settings.from_env(
        {"RECSYS_BUNDLE_ROOT": str(root), "RECSYS_MLFLOW_TRACKING_URI": tracking.tracking_uri}
    )
    assert promote_new_bundle(settings, before={"20260101T000000Z-aaaaaaaa"}) == "20260202T000000Z-bbbbbbbb"
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [
        "==> serving the rebuilt bundle 20260202T000000Z-bbbbbbbb: --rebuild serves what it built, "
        "although the pipeline's rule kept 20260101T000000Z-aaaaaaaa (not comparable: other data)"
    ]
    assert promoted_version(root) == "20260202T000000Z-bbbbbbbb"
    assert int(client.get_model_version_by_alias("movielens-als", "champion").version) == 2
    assert promote_new_bundle(settings, before={"20260101T000000Z-aaaaaaaa"}) is None  # already served


def test_low_recall_index_fails_its_check_and_blocks_the_bundle(tmp_path: Path) -> None:
    # One probe into 40 IVF lists misses most of the exact top-10: the blocking check must fail.
    poor_index = ItemIndexConfig(kind="ivf", ivf_nlist=40, ivf_nprobe=1, min_recall=0.99)
    result = run_graph(
        tmp_path,
        index=poor_index,
        dataset="synthetic",
        synthetic_users=300,
        synthetic_movies=500,
        synthetic_ratings=20_000,
    )
    evaluation = checks(result)["faiss_index_recall"]
    assert not evaluation.passed and evaluation.metadata["recall@10"].value < 0.99
    assert "faiss_index" in materialized(result) and "production_bundle" not in materialized(result)
    assert not (tmp_path / "data" / "bundles").exists() or not any((tmp_path / "data" / "bundles").iterdir())


def test_new_movie_reaches_the_api_through_the_catalogue_refresh(tmp_path: Path) -> None:
    """A movie added to movies.csv (and rated in an accepted stream batch) is known to the API,
    with content-similar movies, after the light refresh alone: no retrain, the model unchanged."""
    import numpy as np
    from serving_support import Server, settings_for

    from recsys_serving.promotion import promoted_version

    source = {
        "dataset": "synthetic",
        "synthetic_users": 300,
        "synthetic_movies": 500,
        "synthetic_ratings": 20_000,
    }
    first = run_graph(tmp_path, **source)
    assert first.success
    base = load_bundle(Path(materialized(first)["production_bundle"]["bundle_path"].value))
    root = base.path.parent

    data_dir = next((tmp_path / "data" / "raw").glob("synthetic-*"))
    template = int(base.item_ids[0])
    movies = pl.read_csv(data_dir / "movies.csv")
    genres = movies.filter(pl.col("movieId") == template)["genres"].item()
    year = int(base.movies.filter(pl.col("movie_id") == template)["year"].item())
    new_id = int(movies["movieId"].max()) + 1
    with open(data_dir / "movies.csv", "a") as handle:
        handle.write(f'{new_id},"Brand New Release ({year})",{genres}\n')
    tags = pl.read_csv(data_dir / "tags.csv")
    template_tags = tags.filter(pl.col("movieId") == template)["tag"].to_list()[:3] or ["atmospheric"]
    with open(data_dir / "tags.csv", "a") as handle:
        for tag in template_tags:
            handle.write(f"1,{new_id},{tag},1500000000\n")
    rater = int(base.user_ids[3])
    accepted = tmp_path / "data" / "stream" / "accepted"
    write_lines(
        accepted / "ratings-new.csv", ["userId,movieId,rating,timestamp", f"{rater},{new_id},4.5,1600000000"]
    )

    refresh_assets = [
        "raw_movies",
        "raw_tags",
        "tag_genome",
        "content_features",
        "training_ratings",
        "catalogue_refresh",
    ]
    second = run_graph(tmp_path, selection=refresh_assets, **source)
    assert second.success
    done = materialized(second)
    assert sorted(done) == sorted(refresh_assets)  # no retrain: als_model and the bundle untouched
    refresh = done["catalogue_refresh"]
    assert refresh["outcome"].value == "promoted", refresh["reason"].value
    assert refresh["added_cold_items"].value == 1
    refreshed = load_bundle(Path(refresh["bundle_path"].value))
    assert promoted_version(root) == refreshed.version != base.version
    assert refreshed.manifest["refreshed_from"]["version"] == base.version
    same_model = (
        np.array_equal(refreshed.item_factors, base.item_factors)
        if base.kind == "als"
        else (refreshed.item_similarity != base.item_similarity).nnz == 0
    )
    assert same_model and np.array_equal(refreshed.top_rows, base.top_rows)
    assert refreshed.cold is not None and new_id in refreshed.cold.movie_ids

    with Server(settings_for(root, tmp_path, cold_slots=3)) as client:
        movie = client.get(f"/movies/{new_id}")
        assert movie.status_code == 200, movie.text
        assert movie.json()["title"] == "Brand New Release" and movie.json()["content_scored"] is True
        similar = client.get(f"/movies/{new_id}/similar", params={"k": 5}).json()
        assert similar["strategy"] == "content" and len(similar["items"]) == 5
        assert template in [item["movieId"] for item in similar["items"]]
        # The new movie is recommendable, but never to the user who already rated it.
        listed = client.get(f"/users/{rater}/recommendations", params={"k": 20}).json()["items"]
        assert new_id not in [item["movieId"] for item in listed]
        assert any(item.get("content_scored") for item in listed)
