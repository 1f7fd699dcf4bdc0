"""Which delivered files become new batch partitions: the sensor's decision, as a pure function.

A file is identified by its content hash. What the hashes are known as comes from two places: the
sensor's cursor and the instance (each ingested batch records its sha256), so a reset cursor
cannot make a batch be ingested twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Delivered:
    stem: str  # the file name without its suffix: the partition it asks to be
    digest: str  # sha256 of its bytes


@dataclass
class RegistrationPlan:
    register: list[tuple[Delivered, str]] = field(default_factory=list)  # new partitions (file, name)
    # Registered but not ingested, and unknown to the cursor (it was reset): their runs are
    # requested again, which the run key makes idempotent.
    waiting: list[tuple[Delivered, str]] = field(default_factory=list)
    redelivered: list[tuple[Delivered, str]] = field(default_factory=list)  # copies of a known batch
    known: dict[str, str] = field(default_factory=dict)  # digest -> partition, for the next cursor


def plan_registrations(
    files: list[Delivered],
    known: dict[str, str],
    registered: set[str],
    ingested: dict[str, str],
) -> RegistrationPlan:
    """Decide for each pending file, in arrival order.

    ``known``: digest -> partition from the cursor; ``registered``: partitions on the instance;
    ``ingested``: partition -> digest of the bytes each ingested partition was read from.

    - bytes already known under another name, or already ingested under this one: a
      re-delivery, set aside;
    - bytes the cursor knows under this name: registered, its run already requested;
    - a registered partition of this name that no known bytes claim: the registered batch,
      waiting for its run;
    - a registered name with other bytes: a corrected delivery, registered as ``<name>-<hash8>``;
    - otherwise a new partition under its own name.
    """
    plan = RegistrationPlan(known={**known, **{d: p for p, d in ingested.items()}})
    taken = set(registered)
    for file in files:
        owner = plan.known.get(file.digest)
        if owner is not None and (owner != file.stem or ingested.get(file.stem) == file.digest):
            plan.redelivered.append((file, owner))
        elif known.get(file.digest) == file.stem:
            continue
        elif file.stem in registered and file.stem not in plan.known.values():
            plan.known[file.digest] = file.stem
            plan.waiting.append((file, file.stem))
        else:
            partition = file.stem if file.stem not in taken else f"{file.stem}-{file.digest[:8]}"
            taken.add(partition)
            plan.known[file.digest] = partition
            plan.register.append((file, partition))
    return plan
