"""Whether a challenger bundle replaces the champion: the decisions that need no comparison.

``promotion_decision`` gathers the facts (check states, the two versions, whether the champion
loads, what each was trained on) and asks :func:`settle_before_comparing`; only when that returns
None are the two bundles compared on the held-out window, by :class:`PromotionRule`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionFacts:
    challenger: str
    champion: str | None  # the served version, None before the first promotion
    checks: dict[str, str]  # blocking check -> "passed" | "failed" | "not evaluated"
    champion_problem: str | None = None  # why the champion cannot be loaded
    champion_source: str | None = None  # the data each was trained on (when both load)
    challenger_source: str | None = None


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def settle_before_comparing(facts: PromotionFacts) -> Verdict | None:
    """The verdict when the facts alone decide, in this order; None when a comparison must."""
    failed = [name for name, state in facts.checks.items() if state == "failed"]
    if failed:
        return Verdict(False, "a blocking check failed: " + ", ".join(failed))
    if facts.champion is None:
        return Verdict(True, "first bundle: no champion yet")
    if facts.champion == facts.challenger:
        return Verdict(False, "the challenger is already the champion")
    if facts.champion_problem is not None:
        return Verdict(True, f"the champion {facts.champion} cannot be loaded ({facts.champion_problem})")
    if facts.champion_source != facts.challenger_source:
        return Verdict(
            False,
            f"not comparable: the champion was trained on {facts.champion_source}, the challenger on "
            f"{facts.challenger_source} (use `recsys-promote promote {facts.challenger}` to switch data)",
        )
    return None


def settle_refresh(base: str, champion: str | None, checks: dict[str, str]) -> Verdict:
    """Whether a catalogue refresh of bundle ``base`` (its model untouched, only the cold part
    rebuilt) replaces the champion. No comparison is needed, the warm model being the base's
    own: the blocking checks, then whether the base is still what is served."""
    failed = [name for name, state in checks.items() if state == "failed"]
    if failed:
        return Verdict(False, "a blocking check failed: " + ", ".join(failed))
    if champion != base:
        return Verdict(False, f"stale: the refresh is of {base}, but {champion or 'nothing'} is served now")
    return Verdict(True, f"catalogue refresh of the champion {base}: same model, new cold items")


ONLINE_WINS = ("treatment wins", "not worse")


def settle_by_experiment(report: dict | None, challenger: str) -> Verdict | None:
    """The verdict online evidence gives, None when it says nothing about this challenger.

    Only a report whose treatment arm served exactly the challenger counts. A win (or "not worse"
    within the report's margin) promotes; a loss rejects; a report made invalid by a sample-ratio
    mismatch, or with no difference yet, decides nothing and the offline rule applies."""
    if not report or report.get("treatment") is None:
        return None
    bundles = report.get("bundles", {}).get(report["treatment"], [])
    if bundles != [challenger] or report.get("sample_ratio_mismatch"):
        return None
    name = f"online evidence (experiment {report['experiment_id']}, {report.get('metric', '')})"
    if report["verdict"] in ONLINE_WINS:
        return Verdict(True, f"{name}: {report['verdict']}: {report['explanation']}")
    if report["verdict"] == "control wins":
        return Verdict(False, f"{name}: the champion is better: {report['explanation']}")
    return None
