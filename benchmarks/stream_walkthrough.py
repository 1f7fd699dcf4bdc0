"""The README's streaming walk-through, replayed in one process on a real (ephemeral) Dagster
instance, with the numbers it quotes written to benchmarks/results/stream_walkthrough.json.

    python benchmarks/stream_walkthrough.py                  # default synthetic data, cutoff 2018-06-01
    python benchmarks/stream_walkthrough.py --batches 20 --inject malformed@3 --inject duplicate@5

What the daemon does is done in order here: the graph is built with its default configuration,
``recsys-simulate`` delivers the batches, ``rating_batch_sensor`` registers them, each partition
is ingested (validated, accepted or quarantined, drift measured), ``retrain_sensor`` is asked
after each ingestion, and a requested retrain runs the graph from ``training_ratings`` down to
``promotion_decision``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from recsys_assets import stream_definitions
from recsys_assets.definitions import all_assets, all_checks
from recsys_assets.defs.resources import (
    AtomicFileIOManager,
    BundleStore,
    DatasetSource,
    MLflowTracking,
    StreamStore,
)
from recsys_assets.defs.retraining import retrain_sensor
from recsys_assets.defs.streaming import drift_report, rating_batch, rating_batch_sensor
from recsys_assets.sources.formats import read_ratings
from recsys_assets.sources.synthetic import SyntheticConfig, write_dataset
from recsys_assets.streaming.simulator import parse_faults, simulate

ROOT = Path(__file__).resolve().parents[1]
RETRAIN = dg.AssetSelection.assets("training_ratings").downstream()


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.asset_key.to_user_string(): {
            k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def decision_summary(metadata: dict) -> dict:
    decision = metadata["promotion_decision"]
    keys = ("outcome", "reason", "champion_ndcg@10", "challenger_ndcg@10", "window_users")
    return {k: decision[k] for k in keys if k in decision}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cutoff", default="2018-06-01")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--inject", action="append", default=None, help="KIND@N, as recsys-simulate")
    args = parser.parse_args()
    faults = args.inject if args.inject is not None else ["malformed@3", "duplicate@5"]
    started = time.time()

    with tempfile.TemporaryDirectory(prefix="recsys-walkthrough-") as scratch:
        work = Path(scratch)
        data_dir = write_dataset(SyntheticConfig(), work / "synthetic")  # the default synthetic data
        stream = StreamStore(root=str(work / "data" / "stream"))
        folders = stream.folders()
        resources = {
            "source": DatasetSource(
                data_dir=str(data_dir),
                data_root=str(work / "data"),
                allow_download=False,
                history_cutoff=args.cutoff,
            ),
            "io_manager": AtomicFileIOManager(base_dir=str(work / "data" / "assets")),
            "mlflow_tracking": MLflowTracking(tracking_uri=f"sqlite:///{work / 'mlflow.db'}"),
            "bundle_store": BundleStore(root=str(work / "data" / "bundles")),
            "stream": stream,
        }
        instance = dg.DagsterInstance.ephemeral()

        print("building the graph (default configuration)", flush=True)
        first = materialized(
            dg.materialize([*all_assets, *all_checks], resources=resources, instance=instance)
        )
        history = first["training_ratings"]["dagster/row_count"]

        files = simulate(
            read_ratings(data_dir),
            folders.incoming,
            folders.root / "simulator.json",
            args.cutoff,
            args.batches,
            faults=parse_faults(faults),
            say=lambda _: None,
        )
        print(f"{len(files)} batch files delivered", flush=True)

        tick = rating_batch_sensor(dg.build_sensor_context(instance=instance, resources={"stream": stream}))
        for request in tick.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        batches, retrains, retrain_cursor = [], [], None
        for request in tick.run_requests:
            run = dg.materialize(
                [rating_batch, drift_report, *stream_definitions.upstream],
                partition_key=request.partition_key,
                resources=resources,
                instance=instance,
                raise_on_error=False,
            )
            batch = materialized(run).get("rating_batch", {})
            drift = materialized(run).get("drift_report", {})
            batches.append(
                {
                    "batch": request.partition_key,
                    "status": batch.get("status"),
                    "ratings": batch.get("dagster/row_count"),
                    "window_rows": drift.get("window_rows"),
                    "retrain_requested": drift.get("retrain_requested"),
                }
            )
            print(
                f"  {request.partition_key}: {batch.get('status')}, {batch.get('dagster/row_count')} ratings",
                flush=True,
            )
            asked = retrain_sensor(dg.build_sensor_context(instance=instance, cursor=retrain_cursor))
            retrain_cursor = asked.cursor
            if asked.run_requests:
                print(f"  retrain requested after {request.partition_key}", flush=True)
                metadata = materialized(
                    dg.materialize(
                        [*all_assets, *all_checks], selection=RETRAIN, resources=resources, instance=instance
                    )
                )
                retrains.append({"after_batch": request.partition_key, **decision_summary(metadata)})
                print(f"  {retrains[-1]}", flush=True)
        duplicates = (
            sorted(p.stem for p in folders.duplicates.glob("*.csv")) if folders.duplicates.is_dir() else []
        )

    accepted = [b for b in batches if b["status"] == "accepted"]
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": "default synthetic (SyntheticConfig())",
        "cutoff": args.cutoff,
        "faults": faults,
        "history_ratings": history,
        "first_decision": decision_summary(first),
        "files_delivered": len(files),
        "batches": batches,
        "accepted": len(accepted),
        "quarantined": [b["batch"] for b in batches if b["status"] == "quarantined"],
        "set_aside_as_duplicates": duplicates,
        "accepted_ratings_per_batch": [
            min(b["ratings"] for b in accepted),
            max(b["ratings"] for b in accepted),
        ]
        if accepted
        else [],
        "retrains": retrains,
        "seconds": round(time.time() - started, 1),
    }
    output = ROOT / "benchmarks" / "results" / "stream_walkthrough.json"
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "batches"}, indent=2, default=str))
    print(f"written to {output}")


if __name__ == "__main__":
    main()
