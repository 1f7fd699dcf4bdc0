"""Online evaluation from the API's request log: serving KPIs, replay of the served lists against
the ratings that arrived later, and the A/B experiment's report."""

import json

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from recsys_serving.bundle import load_bundle
from recsys_serving.engine import NO_ROWS, Engine
from recsys_serving.experiments import EXPERIMENT_HISTORY
from recsys_serving.promotion import promoted_version

from ..online.offpolicy import logged_places, off_policy_value, place_rewards
from ..online.replay import kpis_by_group, per_user, replay_metrics, served_lists, summarise
from ..online.stats import decide, required_users, sample_ratio, welch
from .metadata import markdown_table, upstream_source
from .plots import interval_chart
from .resources import BundleStore, RequestLogStore

GROUP_NAME = "online"


@dg.asset(group_name=GROUP_NAME, kinds={"sqlite", "polars"})
def serving_kpis(
    context: dg.AssetExecutionContext,
    request_log: RequestLogStore,
    raw_movies: pl.DataFrame,
    training_ratings: pl.DataFrame,
) -> pl.DataFrame:
    """Per bundle version and arm: traffic, error and fallback rates, latency p50/p95/p99,
    catalogue coverage, novelty, intra-list diversity (genres) and popularity bias (Gini)."""
    log = request_log.read()
    kpis = kpis_by_group(log, raw_movies, training_ratings)
    context.add_output_metadata({"data_source": upstream_source(context), **kpi_metadata(kpis, log)})
    return kpis


def kpi_metadata(kpis: pl.DataFrame, log: pl.DataFrame) -> dict:
    """The KPI table and a latency chart per bundle / arm (shared with the daily partitions)."""
    metadata: dict = {"dagster/row_count": len(kpis), "logged_requests": len(log)}
    if len(kpis):
        metadata["kpis"] = dg.MetadataValue.md(markdown_table(kpis, 20))
        labels = [f"{v}/{a}" for v, a in zip(kpis["bundle_version"], kpis["arm"], strict=True)]
        p99 = kpis["latency_p99_ms"].to_list()
        metadata["latency_p99_chart"] = dg.MetadataValue.md(
            interval_chart(labels, p99, p99, p99, "ms", "latency p99 per bundle / arm")
        )
    else:
        metadata["note"] = "no request logged"
    return metadata


class ReplayConfig(dg.Config):
    horizon_days: float = Field(30.0, gt=0)
    positive_threshold: float = 4.0
    bootstrap_samples: int = Field(1000, ge=0)


@dg.asset(group_name=GROUP_NAME, kinds={"sqlite", "polars"})
def replay_evaluation(
    context: dg.AssetExecutionContext,
    config: ReplayConfig,
    request_log: RequestLogStore,
    training_ratings: pl.DataFrame,
) -> pl.DataFrame:
    """Every answered known-user request scored against the ratings its user gave within the
    horizon after it (the simulated time of replayed traffic): hit rate, precision@k, NDCG@k and
    whether the user rated anything served, per request; summarised per bundle version and arm
    over users with 95% bootstrap intervals."""
    served = served_lists(request_log.read())
    metrics = replay_metrics(served, training_ratings, config.horizon_days, config.positive_threshold)
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "horizon_days": config.horizon_days,
            **replay_metadata(metrics, config.bootstrap_samples),
        }
    )
    return metrics


def replay_metadata(metrics: pl.DataFrame, bootstrap_samples: int) -> dict:
    """Per bundle / arm summary over users with intervals, and an NDCG chart (shared with the
    per-batch partitions)."""
    summary = summarise(per_user(metrics), n_boot=bootstrap_samples)
    metadata: dict = {"dagster/row_count": len(metrics)}
    if len(summary):
        metadata["summary"] = dg.MetadataValue.md(markdown_table(summary, 20))
        labels = [f"{v}/{a}" for v, a in zip(summary["bundle_version"], summary["arm"], strict=True)]
        metadata["ndcg_chart"] = dg.MetadataValue.md(
            interval_chart(
                labels,
                summary["ndcg"].to_list(),
                summary["ndcg_low"].to_list(),
                summary["ndcg_high"].to_list(),
                "NDCG@k",
                "replay NDCG@k per bundle / arm, 95% CI",
            )
        )
        metadata["users"] = int(summary["users"].sum())
    else:
        metadata["note"] = "no answered known-user request logged"
    return metadata


class ExperimentConfig(dg.Config):
    experiment_id: str = ""  # default: the latest experiment in the request log
    control_arm: str = "control"
    metric: str = "ndcg"
    min_effect: float = Field(0.005, gt=0)  # the smallest absolute difference worth detecting
    margin: float = Field(0.0, ge=0)  # "not worse" when the interval's low end is above -margin


@dg.asset(group_name=GROUP_NAME, kinds={"polars"})
def experiment_report(
    context: dg.AssetExecutionContext,
    config: ExperimentConfig,
    replay_evaluation: pl.DataFrame,
    bundle_store: BundleStore,
) -> dict:
    """The A/B experiment per arm: replay metrics per user, a sample-ratio-mismatch check
    (chi-square against the configured weights, flagged below p = 0.001), Welch's t-test on the
    per-user metric with the difference and its 95% interval, the users the minimum effect needs,
    and a plain-language verdict (winner, not worse, no difference yet, invalid)."""
    logged = replay_evaluation.filter(pl.col("experiment_id").is_not_null())
    experiment_id = config.experiment_id or (logged.sort("at")["experiment_id"][-1] if len(logged) else "")
    if not experiment_id:
        context.add_output_metadata(
            {"data_source": upstream_source(context), "verdict": "no experiment in the request log"}
        )
        return {"experiment_id": None, "verdict": "none", "explanation": "no experiment in the request log"}
    definition = _experiment_definition(bundle_store, experiment_id)
    users = per_user(logged.filter(pl.col("experiment_id") == experiment_id), by=("arm", "bundle_version"))
    weights = {arm["name"]: arm["weight"] for arm in definition["arms"]}
    treatment_arms = [name for name in weights if name != config.control_arm]
    if config.control_arm not in weights or len(treatment_arms) != 1:
        raise dg.Failure(
            f"experiment {experiment_id}: expected a '{config.control_arm}' arm and one treatment, got {list(weights)}"
        )
    treatment = treatment_arms[0]
    counts = {arm: int((users["arm"] == arm).sum()) for arm in weights}
    ratio = sample_ratio(counts, weights)
    values = {arm: users.filter(pl.col("arm") == arm)[config.metric].to_numpy() for arm in weights}
    if min(len(v) for v in values.values()) < 2:
        report = {
            "experiment_id": experiment_id,
            "verdict": "no difference yet",
            "explanation": f"too few users so far: {counts}",
        }
        context.add_output_metadata(
            {
                "data_source": upstream_source(context),
                "verdict": report["verdict"],
                "explanation": report["explanation"],
            }
        )
        return report
    difference = welch(values[config.control_arm], values[treatment])
    share = weights[treatment] / sum(weights.values())
    needed = required_users(
        float(np.std(values[config.control_arm], ddof=1)) or 1e-9,
        float(np.std(values[treatment], ddof=1)) or 1e-9,
        config.min_effect,
        share,
    )
    verdict = decide(ratio, difference, needed, margin=config.margin)
    bundles = {
        arm: sorted(set(users.filter(pl.col("arm") == arm)["bundle_version"].to_list())) for arm in weights
    }
    report = {
        "experiment_id": experiment_id,
        "metric": config.metric,
        "control": config.control_arm,
        "treatment": treatment,
        "bundles": bundles,
        "users": counts,
        "weights": weights,
        "srm_p_value": ratio.p_value,
        "sample_ratio_mismatch": ratio.mismatch,
        "control_mean": difference.control_mean,
        "treatment_mean": difference.treatment_mean,
        "difference": difference.difference,
        "ci95": [difference.ci_low, difference.ci_high],
        "p_value": difference.p_value,
        "users_needed": needed,
        "verdict": verdict.outcome,
        "explanation": verdict.explanation,
    }
    table = pl.DataFrame(
        [
            {
                "arm": arm,
                "users": counts[arm],
                "weight": weights[arm],
                config.metric: float(values[arm].mean()),
            }
            for arm in weights
        ]
    )
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "verdict": verdict.outcome,
            "explanation": dg.MetadataValue.md(verdict.explanation),
            "arms": dg.MetadataValue.md(markdown_table(table)),
            "difference": difference.difference,
            "p_value": difference.p_value,
            "srm_p_value": ratio.p_value,
            "users_needed": needed,
            "report": dg.MetadataValue.json(report),
        }
    )
    return report


def _experiment_definition(bundle_store: BundleStore, experiment_id: str) -> dict:
    """The experiment as it was started (``experiments.jsonl`` beside the bundles)."""
    history = bundle_store.path() / EXPERIMENT_HISTORY
    starts = (
        [
            entry["experiment"]
            for entry in (json.loads(line) for line in history.read_text().splitlines() if line.strip())
            if entry.get("action") == "start" and entry["experiment"]["id"] == experiment_id
        ]
        if history.is_file()
        else []
    )
    if not starts:
        raise dg.Failure(f"experiment {experiment_id} is in the request log but not in {history}")
    return starts[-1]


class OffPolicyConfig(dg.Config):
    candidate_bundle: str = ""  # a bundle version; default: the newest bundle that is not served
    horizon_days: float = Field(30.0, gt=0)
    positive_threshold: float = 4.0


@dg.asset(group_name=GROUP_NAME, kinds={"sqlite", "polars"})
def off_policy_estimate(
    context: dg.AssetExecutionContext,
    config: OffPolicyConfig,
    request_log: RequestLogStore,
    training_ratings: pl.DataFrame,
    bundle_store: BundleStore,
) -> dict:
    """How a candidate bundle would have done on the traffic another served, from explored
    requests (an experiment with epsilon > 0 logs each item's propensity): IPS and self-normalised
    IPS of its rewards (a place counts when the user later rated its movie positively), beside the
    logging policy's own mean reward."""
    root = bundle_store.path()
    served = promoted_version(root)
    versions = (
        sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
    )
    candidate = config.candidate_bundle or next((v for v in reversed(versions) if v != served), "")
    places = logged_places(request_log.read())
    if not candidate or places.is_empty():
        reason = "no candidate bundle" if not candidate else "no explored request logged (epsilon 0)"
        context.add_output_metadata({"data_source": upstream_source(context), "note": reason})
        return {"candidate": candidate or None, "note": reason}
    engine = Engine(load_bundle(root / candidate))

    def ranked(user_id: int, k: int) -> list[int]:
        row = engine.user_row(user_id)
        scored = (
            engine.popular(k, [], NO_ROWS)
            if row is None
            else engine.recommend_known(row, k, NO_ROWS, [], False)[0]
        )
        return engine.item_ids[scored.rows[scored.rows < engine.n_items]].tolist()

    rewarded = place_rewards(places, training_ratings, config.horizon_days, config.positive_threshold)
    value = off_policy_value(rewarded, ranked)
    context.add_output_metadata(
        {
            "data_source": upstream_source(context),
            "candidate": candidate,
            **{name: float(v) for name, v in value.items()},
            "logged_bundles": dg.MetadataValue.json(sorted(set(rewarded["bundle_version"].to_list()))),
        }
    )
    return {"candidate": candidate, **value}
