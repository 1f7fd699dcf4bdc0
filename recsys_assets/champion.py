"""The champion: which bundle is served (the CURRENT pointer) and which registered model version
holds MLflow's ``champion`` alias. Both move together, and every move is recorded.

``recsys-promote status`` shows the champion and the history, ``recsys-promote rollback`` re-points
the champion to the bundle served before it, ``recsys-promote promote VERSION`` forces one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlflow

from recsys_serving.promotion import (
    CHAMPION,
    HISTORY,
    REGISTERED_MODEL,
    promote,
    promoted_version,
    registry_client,
)

from .settings import Settings


def model_version_of(client: mlflow.MlflowClient, model: str, bundle_version: str) -> str | None:
    """The registered model version built as ``bundle_version`` (tag ``bundle_version``)."""
    if not client.search_registered_models(filter_string=f"name = '{model}'"):
        return None
    found = client.search_model_versions(f"name = '{model}' and tag.bundle_version = '{bundle_version}'")
    return found[0].version if found else None


def make_champion(
    bundle_root: Path,
    client: mlflow.MlflowClient,
    bundle_version: str,
    reason: str,
    model: str = REGISTERED_MODEL,
    action: str = "promote",
) -> str | None:
    """Switch the served pointer, then the ``champion`` alias, to ``bundle_version``; returns the
    model version (None when the bundle was never registered, e.g. built outside Dagster)."""
    model_version = model_version_of(client, model, bundle_version)
    promote(bundle_root, bundle_version, reason=reason, action=action, model_version=model_version)
    if model_version is not None:
        client.set_registered_model_alias(model, CHAMPION, model_version)
    return model_version


def history(bundle_root: Path) -> list[dict]:
    path = Path(bundle_root) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def champion_lineage(bundle_root: Path) -> list[str]:
    """Versions that were champion, oldest first, with rolled-back ones taken off the stack."""
    stack: list[str] = []
    for record in history(bundle_root):
        if record.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != record["version"]:
                stack.append(record["version"])
        elif not stack or stack[-1] != record["version"]:
            stack.append(record["version"])
    return stack


def rollback(
    bundle_root: Path, client: mlflow.MlflowClient, reason: str, model: str = REGISTERED_MODEL
) -> str:
    """Re-point the champion to the bundle that was champion before the current one."""
    lineage = champion_lineage(bundle_root)
    current = promoted_version(bundle_root)
    if current is None:
        raise ValueError(f"nothing is promoted under {bundle_root}: there is nothing to roll back")
    if len(lineage) < 2:
        raise ValueError(f"{current} is the first champion under {bundle_root}: there is no earlier one")
    target = lineage[-2]
    if not (Path(bundle_root) / target / "manifest.json").is_file():
        raise ValueError(f"the previous champion {target} is gone from {bundle_root}")
    make_champion(bundle_root, client, target, reason=reason, model=model, action="rollback")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show, roll back or force the served champion bundle.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="the champion and the promotion history")
    back = commands.add_parser("rollback", help="re-point the champion to the previous one")
    back.add_argument("--reason", default="manual rollback")
    force = commands.add_parser("promote", help="make a bundle version the champion")
    force.add_argument("version")
    force.add_argument("--reason", default="manual promotion")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    root = settings.bundle_root
    client = registry_client(settings.mlflow_tracking_uri)
    try:
        if args.command == "rollback":
            before = promoted_version(root)
            target = rollback(root, client, args.reason)
            print(f"rolled back: {before} -> {target}")
        elif args.command == "promote":
            version = make_champion(root, client, args.version, args.reason)
            print(f"promoted {args.version} (model version {version or 'unregistered'})")
        else:
            print(f"champion: {promoted_version(root) or 'none'} (bundles under {root})")
            for record in history(root)[-20:]:
                print(
                    f"  {record['at']}  {record.get('action', 'promote'):8}  {record['version']}"
                    f"  (was {record.get('previous')}): {record['reason']}"
                )
    except (ValueError, FileNotFoundError) as exc:
        print(f"recsys-promote: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
