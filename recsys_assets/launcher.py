"""`recsys-demo`: build the graph if nothing is promoted yet, then run the API and the Dagster UI.

One Ctrl-C stops both. Both run as child processes (the launcher itself imports neither dagster
nor the API), each in its own process group so a stop reaches their children too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from recsys_serving.promotion import promoted_path, promoted_version

from .settings import Settings, project_root


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def bundle_versions(root: Path) -> list[str]:
    """Bundle directories under ``root``, oldest first (versions start with their UTC time)."""
    if not Path(root).is_dir():
        return []
    return sorted(p.name for p in Path(root).iterdir() if (p / "manifest.json").is_file())


def promote_new_bundle(
    settings: Settings, before: set[str], registered_model: str = "movielens-als"
) -> str | None:
    """Point CURRENT and the MLflow ``champion`` alias at the newest bundle not in ``before``."""
    new = [v for v in bundle_versions(settings.bundle_root) if v not in before]
    if not new or promoted_version(settings.bundle_root) == new[-1]:
        return None
    version = new[-1]
    from .champion import make_champion, registry_client  # mlflow is slow to import: only when needed

    client = registry_client(settings.mlflow_tracking_uri)
    make_champion(settings.bundle_root, client, version, "recsys-demo --rebuild", model=registered_model)
    print(f"==> promoted the rebuilt bundle {version}", flush=True)
    return version


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    deadline = time.time() + 30
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--ui-port", type=int, default=3000)
    parser.add_argument("--no-ui", action="store_true", help="run only the API")
    parser.add_argument(
        "--rebuild", action="store_true", help="materialise the graph even if a bundle is promoted"
    )
    args = parser.parse_args(argv)

    root = project_root()
    settings = Settings.from_env()
    env = {**os.environ}
    env.setdefault("DAGSTER_HOME", str(root / "dagster_home"))

    if args.rebuild or promoted_path(settings.bundle_root) is None:
        before = set(bundle_versions(settings.bundle_root))
        print(f"==> materialising every asset (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
        command = [
            _bin("dagster"),
            "asset",
            "materialize",
            "-m",
            "recsys_assets.definitions",
            "--select",
            "*",
        ]
        if subprocess.run(command, cwd=root, env=env, check=False).returncode != 0:
            print("materialisation failed: see the log above", file=sys.stderr)
            return 1
        # Asking for a rebuild means serving it: the pipeline itself only promotes a first bundle.
        promote_new_bundle(settings, before)
    bundle = promoted_path(settings.bundle_root)
    if bundle is None:
        print(f"no bundle is promoted in {settings.bundle_root} after materialising", file=sys.stderr)
        return 1

    processes: list[subprocess.Popen] = []
    api_command = [sys.executable, "-m", "uvicorn", "recsys_serving.main:app", "--host", "127.0.0.1",
                   "--port", str(args.api_port)]  # fmt: skip
    processes.append(subprocess.Popen(api_command, cwd=root, env=env, start_new_session=True))
    if not args.no_ui:
        ui_command = [_bin("dagster"), "dev", "-w", "workspace.yaml", "-p", str(args.ui_port)]
        processes.append(subprocess.Popen(ui_command, cwd=root, env=env, start_new_session=True))

    def stop_on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    api = f"http://127.0.0.1:{args.api_port}"
    try:
        deadline = time.time() + 120
        while True:
            status, ready = _get(f"{api}/ready")
            if status == 200:
                break
            if time.time() > deadline or processes[0].poll() is not None:
                print(f"the API did not become ready: {ready or status}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        user = int(np.load(bundle / "user_ids.npy", mmap_mode="r")[0])
        print(
            "\n==> serving bundle {version} ({dataset})\n"
            "    API:        {api}   (docs: {api}/docs, metrics: {api}/metrics)\n"
            "{ui}"
            "    try:        curl '{api}/users/{user}/recommendations?k=5&explain=true'\n"
            "                curl -X POST {api}/recommendations -H 'content-type: application/json' "
            '-d \'{{"liked": [1, 2, 3], "k": 5}}\'\n'
            "    Ctrl-C stops everything.\n".format(
                version=ready["bundle_version"],
                dataset=ready.get("dataset"),
                api=api,
                user=user,
                ui="" if args.no_ui else f"    Dagster UI: http://127.0.0.1:{args.ui_port}\n",
            ),
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("a service exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n==> stopping", flush=True)
        return 0
    finally:
        _stop(processes)


if __name__ == "__main__":
    sys.exit(main())
