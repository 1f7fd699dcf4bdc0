"""The streaming loop on a real ephemeral Dagster instance: simulated batches, the batch sensor,
partitioned ingestion with quarantine, drift reports, the retrain sensor and schedule, promotion
decisions recorded in Dagster and MLflow, and rollback."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from recsys_assets import stream_definitions
from recsys_assets.champion import champion_lineage, registry_client, rollback
from recsys_assets.definitions import all_assets, all_checks
from recsys_assets.definitions import defs as main_defs
from recsys_assets.defs.modeling import ALSModelConfig
from recsys_assets.defs.partitions import DRIFT_REPORT, RATING_BATCH, rating_batches
from recsys_assets.defs.promotion import PromotionConfig
from recsys_assets.defs.resources import (
    AtomicFileIOManager,
    BundleStore,
    DatasetSource,
    MLflowTracking,
    RequestLogStore,
    StreamStore,
)
from recsys_assets.defs.retraining import retrain_sensor, weekly_retrain
from recsys_assets.defs.streaming import drift_report, rating_batch, rating_batch_sensor
from recsys_assets.sources.formats import read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
from recsys_assets.streaming.simulator import parse_faults, simulate
from recsys_assets.streaming.store import content_hash
from recsys_serving.promotion import promoted_version

FAST = ALSModelConfig(tune=False, factors=32, iterations=10, bootstrap_samples=50)
WORSE = ALSModelConfig(model_kind="als", tune=False, factors=1, iterations=1, bootstrap_samples=50)
BATCH_ASSETS = [rating_batch, drift_report, *stream_definitions.upstream]
RETRAIN = dg.AssetSelection.assets("training_ratings").downstream()


class Loop:
    """One project's worth of folders, resources and instance, driven like the daemon would."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = write_dataset(
            SyntheticConfig(n_users=300, n_movies=400, n_ratings=20_000, seed=11), tmp_path / "synthetic"
        )
        ratings = read_ratings(self.data_dir)
        cutoff_ts = int(ratings["timestamp"].quantile(0.75))
        self.cutoff = datetime.fromtimestamp(cutoff_ts, UTC).strftime("%Y-%m-%d")
        self.ratings = ratings
        data_root = tmp_path / "data"
        self.stream = StreamStore(root=str(data_root / "stream"))
        self.folders = self.stream.folders()
        self.bundles = data_root / "bundles"
        self.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.resources = {
            "source": DatasetSource(
                data_dir=str(self.data_dir),
                data_root=str(data_root),
                allow_download=False,
                history_cutoff=self.cutoff,
            ),
            "io_manager": AtomicFileIOManager(base_dir=str(data_root / "assets")),
            "mlflow_tracking": MLflowTracking(tracking_uri=self.tracking_uri),
            "bundle_store": BundleStore(root=str(self.bundles)),
            "stream": self.stream,
            "request_log": RequestLogStore(path=str(data_root / "request_log.sqlite")),
        }
        self.instance = dg.DagsterInstance.ephemeral()
        self.batch_cursor: str | None = None

    def deliver(self, batches: int, faults: list[str] | None = None) -> list[Path]:
        return simulate(
            self.ratings,
            self.folders.incoming,
            self.folders.root / "simulator.json",
            self.cutoff,
            batches,
            window_days=None,
            count=900,
            faults=parse_faults(faults or []),
            say=lambda _: None,
        )

    def train(self, selection=None, als: ALSModelConfig = FAST, promotion: PromotionConfig | None = None):
        result = dg.materialize(
            [*all_assets, *all_checks],
            selection=selection,
            resources=self.resources,
            instance=self.instance,
            run_config=dg.RunConfig(
                ops={"als_model": als, **({"promotion_decision": promotion} if promotion else {})}
            ),
        )
        return _metadata(result)

    def batch_sensor(self) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.batch_cursor, resources={"stream": self.stream}
        )
        result = rating_batch_sensor(context)
        self.batch_cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    def ingest(self, partition: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            BATCH_ASSETS,
            partition_key=partition,
            resources=self.resources,
            instance=self.instance,
            raise_on_error=False,
        )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Loop:
    return Loop(tmp_path_factory.mktemp("loop"))


def test_batches_flow_through_sensor_validation_drift_and_promotion(loop: Loop) -> None:
    first = loop.train()
    assert first["promotion_decision"]["outcome"].value == "promoted"  # no champion existed
    champion_v1 = promoted_version(loop.bundles)
    assert first["training_ratings"]["streamed_ratings"].value == 0

    # Three batches, the second one malformed: the sensor registers all three and asks for runs.
    files = loop.deliver(3, ["malformed@2"])
    result = loop.batch_sensor()
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [f.stem for f in files]
    assert set(loop.instance.get_dynamic_partitions(rating_batches.name)) == set(keys)
    assert not loop.batch_sensor().run_requests  # pending files are not requested twice

    good1 = loop.ingest(keys[0])
    assert good1.success
    assert (loop.folders.accepted / files[0].name).is_file()
    report = json.loads((loop.folders.drift / f"{keys[0]}.json").read_text())
    assert report["batch_drift"]["rows"] == 900

    bad = loop.ingest(keys[1])
    assert not bad.success
    [check] = bad.get_asset_check_evaluations()
    assert check.check_name == "batch_expectations" and not check.passed
    assert "four-and-a-half" in check.description
    assert (loop.folders.quarantine / files[1].name).is_file()  # moved, not deleted
    reason = json.loads((loop.folders.quarantine / f"{keys[1]}.reason.json").read_text())
    assert reason["reason"] == "malformed file" and "line 2" in reason["problems"]
    assert "drift_report" not in _metadata(bad)  # the blocking check stopped it

    good2 = loop.ingest(keys[2])  # later good batches keep flowing
    assert good2.success
    drift = _metadata(good2)["drift_report"]
    assert drift["window_batches"].value == 2 and drift["window_rows"].value == 1800
    assert "data:image/png;base64" in drift["report"].value
    assert isinstance(drift["window_item_psi"].value, float)
    # 1,800 new ratings against ~15k training ones crosses the default 5% share.
    assert drift["retrain_requested"].value is True

    # A byte-identical re-delivery is set aside, never ingested.
    [redelivered] = loop.deliver(1, ["duplicate@1"])
    assert not loop.batch_sensor().run_requests
    assert not redelivered.exists()
    assert (loop.folders.duplicates / redelivered.name).is_file()
    assert len(loop.instance.get_dynamic_partitions(rating_batches.name)) == 3

    # Re-materialising an accepted partition (a backfill) reads it from accepted/ again.
    assert loop.ingest(keys[0]).success

    # The retrain sensor acts on the drift report; a second evaluation does not repeat it.
    context = dg.build_sensor_context(instance=loop.instance)
    requested = retrain_sensor(context)
    assert len(requested.run_requests) == 1 and requested.run_requests[0].job_name in (None, "retrain")
    again = retrain_sensor(dg.build_sensor_context(instance=loop.instance, cursor=requested.cursor))
    assert not again.run_requests and again.skip_reason

    retrained = loop.train(RETRAIN, promotion=PromotionConfig(tolerance=1.0))
    assert retrained["training_ratings"]["streamed_ratings"].value == 1800  # the accepted batches only
    assert retrained["training_ratings"]["accepted_batches"].value == 2
    # Drift reports of batches that training has now included ask for nothing more.
    assert not retrain_sensor(dg.build_sensor_context(instance=loop.instance)).run_requests
    decision = retrained["promotion_decision"]
    assert decision["outcome"].value == "promoted"
    for side in ("champion", "challenger"):
        assert 0.0 < decision[f"{side}_ndcg@10"].value <= 1.0
    assert decision["window_users"].value >= 20
    assert "| champion |" in decision["comparison"].value
    champion_v2 = promoted_version(loop.bundles)
    assert champion_v2 != champion_v1 and decision["champion_after"].value == champion_v2

    # A deliberately worse challenger (1 factor, 1 iteration) is not promoted.
    worse = loop.train(RETRAIN, als=WORSE)["promotion_decision"]
    assert worse["outcome"].value == "rejected", worse["reason"].value
    assert worse["challenger_ndcg@10"].value < worse["champion_ndcg@10"].value
    # Each bundle is ranked by its own kind: the champion of the automatic choice, the ALS challenger.
    assert worse["challenger_kind"].value == "als" and worse["champion_kind"].value in (
        "als",
        "ease",
        "item_knn",
    )
    assert promoted_version(loop.bundles) == champion_v2
    client = registry_client(loop.tracking_uri)
    challenger = client.get_model_version_by_alias("movielens-als", "challenger")
    assert challenger.tags["promotion.outcome"] == "rejected"
    assert float(challenger.tags["promotion.challenger_ndcg_at_10"]) == pytest.approx(
        worse["challenger_ndcg@10"].value, abs=1e-6
    )
    assert (
        client.get_model_version_by_alias("movielens-als", "champion").tags["bundle_version"] == champion_v2
    )

    # Rollback re-points the served bundle and the champion alias to the previous champion.
    assert rollback(loop.bundles, client, "test") == champion_v1
    assert promoted_version(loop.bundles) == champion_v1
    assert (
        client.get_model_version_by_alias("movielens-als", "champion").tags["bundle_version"] == champion_v1
    )
    assert champion_lineage(loop.bundles) == [champion_v1]


def test_unknown_movies_batch_is_quarantined_with_the_failed_expectation(loop: Loop) -> None:
    [spoiled] = loop.deliver(1, ["unknown_movies@1"])
    [request] = loop.batch_sensor().run_requests
    result = loop.ingest(request.partition_key)
    assert not result.success
    reason = json.loads((loop.folders.quarantine / f"{spoiled.stem}.reason.json").read_text())
    assert reason["failed_expectations"] == ["expect_column_values_to_be_in_set(movie_id)"]
    assert (loop.folders.quarantine / spoiled.name).is_file()


def test_empty_batch_is_accepted_as_a_quiet_period(loop: Loop) -> None:
    [empty] = loop.deliver(1, ["empty@1"])
    [request] = loop.batch_sensor().run_requests
    result = loop.ingest(request.partition_key)
    assert result.success
    assert (loop.folders.accepted / empty.name).is_file()
    assert _metadata(result)["drift_report"]["batch_rows"].value == 0


def test_schedule_and_sensor_definitions_evaluate() -> None:
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 23, 4, tzinfo=UTC)
    )
    [request] = list(weekly_retrain.evaluate_tick(context).run_requests)
    assert request.job_name in (None, "retrain")
    assert weekly_retrain.cron_schedule == "0 4 * * 1"
    assert "no new drift reports" in str(
        retrain_sensor(dg.build_sensor_context(instance=instance)).skip_reason
    )
    dg.Definitions.validate_loadable(main_defs)
    dg.Definitions.validate_loadable(stream_definitions.defs)
    assert main_defs.resolve_sensor_def("retrain_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert (
        stream_definitions.defs.resolve_sensor_def("rating_batch_sensor").default_status
        == dg.DefaultSensorStatus.RUNNING
    )


def test_corrected_redelivery_under_the_same_name_becomes_its_own_partition(tmp_path: Path) -> None:
    stream = StreamStore(root=str(tmp_path / "stream"))
    folders = stream.folders()
    folders.incoming.mkdir(parents=True)
    (folders.incoming / "ratings-000001.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,1500000000\n"
    )
    instance = dg.DagsterInstance.ephemeral()
    first = rating_batch_sensor(dg.build_sensor_context(instance=instance, resources={"stream": stream}))
    instance.add_dynamic_partitions(rating_batches.name, ["ratings-000001"])
    folders.accepted.mkdir()
    (folders.incoming / "ratings-000001.csv").rename(folders.accepted / "ratings-000001.csv")
    (folders.incoming / "ratings-000001.csv").write_text(
        "userId,movieId,rating,timestamp\n1,2,4.0,1500000000\n"
    )
    second = rating_batch_sensor(
        dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"stream": stream})
    )
    [request] = second.run_requests
    assert request.partition_key.startswith("ratings-000001-") and request.partition_key != "ratings-000001"
    assert (folders.incoming / f"{request.partition_key}.csv").is_file()
    assert pl.read_csv(folders.accepted / "ratings-000001.csv")["movieId"].to_list() == [1]  # untouched


def test_original_and_redelivery_in_one_tick_keep_the_first_delivered(tmp_path: Path) -> None:
    stream = StreamStore(root=str(tmp_path / "stream"))
    folders = stream.folders()
    folders.incoming.mkdir(parents=True)
    body = "userId,movieId,rating,timestamp\n1,1,4.0,1500000000\n"
    original = folders.incoming / "ratings-2017-01-22_2017-01-29.csv"
    # The re-delivery's name sorts first; arrival order must win.
    again = folders.incoming / "ratings-2017-01-22_2017-01-29-redelivered.csv"
    original.write_text(body)
    again.write_text(body)
    os.utime(original, ns=(1_000_000_000, 1_000_000_000))
    os.utime(again, ns=(2_000_000_000, 2_000_000_000))
    result = rating_batch_sensor(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources={"stream": stream})
    )
    assert [r.partition_key for r in result.run_requests] == [original.stem]
    assert original.is_file() and (folders.duplicates / again.name).is_file()


def test_a_reset_cursor_never_registers_a_batch_twice(tmp_path: Path) -> None:
    """The hashes the instance recorded decide, not only the cursor: with the cursor lost, a file
    still waiting for its run is requested under its registered partition, and a byte-identical
    copy of an ingested batch is set aside."""
    stream = StreamStore(root=str(tmp_path / "stream"))
    folders = stream.folders()
    folders.incoming.mkdir(parents=True)
    waiting, ingested = folders.incoming / "ratings-b.csv", folders.incoming / "ratings-a.csv"
    ingested.write_text("userId,movieId,rating,timestamp\n1,1,4.0,1500000000\n")
    waiting.write_text("userId,movieId,rating,timestamp\n1,2,4.0,1500000000\n")
    instance = dg.DagsterInstance.ephemeral()

    def tick() -> dg.SensorResult:  # a fresh cursor every time
        result = rating_batch_sensor(dg.build_sensor_context(instance=instance, resources={"stream": stream}))
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    first = tick()
    assert sorted(r.partition_key for r in first.run_requests) == ["ratings-a", "ratings-b"]
    # ratings-a is ingested (its file moves to accepted/, its hash is recorded); ratings-b's run
    # has not happened yet.
    folders.accepted.mkdir()
    digest = content_hash(ingested)
    ingested.rename(folders.accepted / ingested.name)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(RATING_BATCH, partition="ratings-a", metadata={"sha256": digest})
    )
    (folders.incoming / "ratings-a.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1500000000\n")
    second = tick()
    assert [r.partition_key for r in second.run_requests] == ["ratings-b"]
    assert not second.dynamic_partitions_requests
    assert (folders.duplicates / "ratings-a.csv").is_file()
    assert sorted(instance.get_dynamic_partitions(rating_batches.name)) == ["ratings-a", "ratings-b"]


def test_retrain_sensor_waits_while_a_retrain_runs(tmp_path: Path) -> None:
    """A drift report asks for a retrain while one is running: nothing is requested and the cursor
    stays, so the request is acted on once the running retrain has finished."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._core.utils import make_new_run_id

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(rating_batches.name, ["zeta", "alpha"])  # names do not sort by time
    instance.report_runless_asset_event(
        dg.AssetMaterialization(DRIFT_REPORT, partition="alpha", metadata={"retrain_requested": True})
    )
    running = instance.add_run(
        DagsterRun(job_name="retrain", run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED)
    )
    waiting = retrain_sensor(dg.build_sensor_context(instance=instance))
    assert not waiting.run_requests and waiting.cursor is None
    assert "already running" in str(waiting.skip_reason)
    instance.report_run_failed(running)
    requested = retrain_sensor(dg.build_sensor_context(instance=instance))
    [request] = requested.run_requests
    assert request.tags["recsys/batches"] == "alpha" and requested.cursor is not None
