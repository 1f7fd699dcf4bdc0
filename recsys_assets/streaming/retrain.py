"""When new batches ask for a retrain, and which batches a drift window holds: pure decisions.

Batches are ordered by registration (the order the sensor registered their partitions), never by
name: a producer's file names need not sort by time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DriftSignal:
    storage_id: int  # of the drift_report materialisation
    batch: str
    retrain_requested: bool


@dataclass(frozen=True)
class RetrainDecision:
    batches: list[str]  # a retrain is requested for these when not empty
    cursor: int | None  # the storage id the sensor's cursor moves to; None: it stays
    reason: str


def decide_retrain(signals: list[DriftSignal], trained: set[str], retrain_running: bool) -> RetrainDecision:
    """A retrain for the batches whose drift report asks for one and that no training included
    yet. While a retrain runs the cursor stays, so the request is looked at again afterwards."""
    if not signals:
        return RetrainDecision([], None, "no new drift reports")
    newest = signals[-1].storage_id
    asking = [s.batch for s in signals if s.retrain_requested and s.batch not in trained]
    if not asking:
        return RetrainDecision(
            [], newest, f"{len(signals)} drift report(s), none asks for a retrain on untrained batches"
        )
    if retrain_running:
        return RetrainDecision([], None, "a retrain is already running")
    return RetrainDecision(asking, newest, f"drift reports of {', '.join(asking)} ask for a retrain")


def window_batches(registered: list[str], accepted: set[str], trained: set[str], batch: str) -> list[str]:
    """The accepted batches not yet trained on, registered no later than ``batch``, in
    registration order: what a drift report for ``batch`` measures together."""
    if batch not in registered:
        return [batch] if batch in accepted and batch not in trained else []
    upto = registered[: registered.index(batch) + 1]
    return [b for b in upto if b in accepted and b not in trained]
