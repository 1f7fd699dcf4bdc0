"""Stage 6, promotion: the challenger bundle replaces the champion only if it is not worse on data
neither has seen. The decision is recorded in the asset's metadata and as MLflow tags."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl
from mlflow import MlflowClient

from recsys_serving.bundle import BundleError, load_bundle
from recsys_serving.promotion import promoted_version

from ..champion import make_champion
from ..modeling.comparison import Comparison, PromotionRule, compare_bundles
from ..modeling.promotion import PromotionFacts, settle_before_comparing, settle_by_experiment
from ..processing.frames import iso_time
from .metadata import latest_metadata, upstream_source
from .plots import methods_chart
from .resources import BundleStore, MLflowTracking

# Checks upstream of the bundle that must have passed on their latest evaluation.
BLOCKING_CHECKS = (
    dg.AssetCheckKey(dg.AssetKey("raw_ratings"), "raw_ratings_expectations"),
    dg.AssetCheckKey(dg.AssetKey("interactions"), "interactions_expectations_check"),
    dg.AssetCheckKey(dg.AssetKey("faiss_index"), "faiss_index_recall"),
)


class PromotionConfig(dg.Config):
    primary_metric: str = PromotionRule.metric
    tolerance: float = PromotionRule.tolerance  # relative: the share of the champion's value
    min_users: int = PromotionRule.min_users
    bootstrap_samples: int = 1000
    # Promote (or reject) on the latest experiment_report when its treatment served this
    # challenger and it has a verdict; the offline comparison decides otherwise.
    online_evidence: bool = False

    def rule(self) -> PromotionRule:
        return PromotionRule(metric=self.primary_metric, tolerance=self.tolerance, min_users=self.min_users)


def check_states(instance: dg.DagsterInstance) -> dict[str, str]:
    states = {}
    for key in BLOCKING_CHECKS:
        record = instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.evaluation if record else None
        states[key.to_user_string()] = (
            "not evaluated" if evaluation is None else ("passed" if evaluation.passed else "failed")
        )
    return states


def _latest_experiment_report(instance: dg.DagsterInstance) -> dict | None:
    entry = latest_metadata(instance, dg.AssetKey("experiment_report")).get("report")
    return entry.value if entry is not None and isinstance(entry.value, dict) else None


def _comparison_markdown(comparison: Comparison, metric: str) -> str:
    metrics = (metric, "recall@10", "map@10", "hit_rate@10", "known_user_share")
    window = (
        f"{comparison.evaluation.users:,} users, {comparison.window_interactions:,} held-out interactions "
        f"from {iso_time(comparison.window_first)} to {iso_time(comparison.window_last)}"
    )
    return comparison.evaluation.markdown(metrics) + f"\n\nWindow: {window}."


def _record_in_mlflow(client: MlflowClient, model: str, bundle: dict, run_id: str | None, tags: dict) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(model, bundle["model_version"], key, value)
        if run_id:
            client.set_tag(run_id, key, value)


@dg.asset(group_name="promotion", kinds={"mlflow"})
def promotion_decision(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    production_bundle: dict,
    temporal_splits: dict[str, pl.DataFrame],
    mlflow_tracking: MLflowTracking,
    bundle_store: BundleStore,
) -> dict:
    """Champion against challenger on the same freshest held-out window (each user's latest
    interactions, minus anything either model trained on), with the same metrics. The challenger
    is promoted (served pointer and MLflow ``champion`` alias) only if it is not worse than the
    champion beyond the tolerance and every blocking check passed; the first bundle ever built is
    promoted when no champion exists."""
    root = bundle_store.path()
    rule = config.rule()
    model = mlflow_tracking.registered_model
    client = mlflow_tracking.client()
    challenger_version = production_bundle["version"]
    champion_version = promoted_version(root)
    checks = check_states(context.instance)
    comparison: Comparison | None = None
    kinds: dict[str, str] = {}
    challenger = champion = None
    problem = None
    if champion_version not in (None, challenger_version) and "failed" not in checks.values():
        challenger = load_bundle(production_bundle["path"])
        try:
            champion = load_bundle(root / champion_version)
        except BundleError as exc:
            problem = str(exc)
    facts = PromotionFacts(
        challenger=challenger_version,
        champion=champion_version,
        checks=checks,
        champion_problem=problem,
        champion_source=champion.manifest["dataset"]["source"] if champion else None,
        challenger_source=challenger.manifest["dataset"]["source"] if challenger else None,
    )
    verdict = settle_before_comparing(facts)
    evidence = "facts"
    if verdict is None and config.online_evidence:
        verdict = settle_by_experiment(_latest_experiment_report(context.instance), challenger_version)
        evidence = "online"
    if verdict is not None:
        promote, reason = verdict.promote, verdict.reason
    else:
        evidence = "offline"
        # settle_before_comparing settles every case in which either bundle is missing
        assert champion is not None and challenger is not None
        history = pl.concat([temporal_splits["train"], temporal_splits["validation"]])
        comparison = compare_bundles(
            champion, challenger, history, temporal_splits["test"], n_boot=config.bootstrap_samples
        )
        promote, reason = rule.decide(comparison)
        kinds = {"champion": champion.kind, "challenger": challenger.kind}

    outcome = "promoted" if promote else "rejected"
    if promote:
        make_champion(root, client, challenger_version, reason, model=model)
    context.log.info(f"{outcome} {challenger_version}: {reason}")

    metric = rule.metric
    decision: dict = {
        "outcome": outcome,
        "reason": reason,
        "evidence": evidence,
        "rule": rule.describe(),
        "challenger": challenger_version,
        "champion_before": champion_version,
        "champion_after": promoted_version(root),
        "checks": checks,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    metadata: dict = {
        "data_source": upstream_source(context),
        "outcome": outcome,
        "promoted": promote,
        "reason": reason,
        "evidence": evidence,
        "rule": rule.describe(),
        "challenger_version": challenger_version,
        "champion_before": champion_version or "none",
        "champion_after": decision["champion_after"] or "none",
        "blocking_checks": dg.MetadataValue.json(checks),
    }
    tags = {
        "promotion.outcome": outcome,
        "promotion.reason": reason[:4000],
        "promotion.rule": rule.describe(),
        "promotion.champion_before": champion_version or "none",
        "promotion.decided_at": decision["decided_at"],
        "promotion.dagster_run_id": context.run.run_id,
    }
    if comparison is not None:
        champion_metrics, challenger_metrics = (
            comparison.metrics("champion"),
            comparison.metrics("challenger"),
        )
        decision["champion_metrics"] = champion_metrics
        decision["challenger_metrics"] = challenger_metrics
        decision["window_users"] = comparison.evaluation.users
        decision["kinds"] = kinds
        metadata.update(
            {
                "champion_kind": kinds["champion"],
                "challenger_kind": kinds["challenger"],
                f"champion_{metric}": champion_metrics[metric],
                f"challenger_{metric}": challenger_metrics[metric],
                f"delta_{metric}": challenger_metrics[metric] - champion_metrics[metric],
                "window_users": comparison.evaluation.users,
                "window_interactions": comparison.window_interactions,
                "comparison": dg.MetadataValue.md(_comparison_markdown(comparison, metric)),
                "comparison_chart": dg.MetadataValue.md(methods_chart(comparison.evaluation, metric)),
            }
        )
        safe = metric.replace("@", "_at_")
        tags[f"promotion.champion_{safe}"] = f"{champion_metrics[metric]:.6f}"
        tags[f"promotion.challenger_{safe}"] = f"{challenger_metrics[metric]:.6f}"
        tags["promotion.window_users"] = str(comparison.evaluation.users)
    _record_in_mlflow(client, model, production_bundle, production_bundle.get("mlflow_run_id"), tags)
    context.add_output_metadata(metadata)
    return decision
