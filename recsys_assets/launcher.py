"""`recsys-demo`: build the graph if nothing is promoted yet, then run the API and the Dagster UI.

One Ctrl-C stops both. Both run as child processes (the launcher itself imports neither dagster
nor the API), each in its own process group so a stop reaches their children too. The terminal
shows what a user needs (one line per finished step, warnings, the banner once both answer);
the full logs go to ``$RECSYS_DATA_ROOT/logs/``.
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

from recsys_serving.paths import project_root
from recsys_serving.promotion import REGISTERED_MODEL, promoted_path, promoted_version, registry_client

from .settings import Settings


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


def _is_refresh(bundle: Path) -> bool:
    try:
        return "refreshed_from" in json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):
        return False


def promote_new_bundle(
    settings: Settings, before: set[str], registered_model: str = REGISTERED_MODEL
) -> str | None:
    """Point CURRENT and the MLflow ``champion`` alias at the newest bundle not in ``before``, and
    say in one line what happened and why; None when the pipeline had already promoted it."""
    # A catalogue refresh is of the bundle served before, not what the run built.
    new = [
        v
        for v in bundle_versions(settings.bundle_root)
        if v not in before and not _is_refresh(settings.bundle_root / v)
    ]
    if not new:
        return None
    version = new[-1]
    from .champion import make_champion, model_version_of  # mlflow: only when needed

    client = registry_client(settings.mlflow_tracking_uri)
    registered = model_version_of(client, registered_model, version)
    tags = client.get_model_version(registered_model, registered).tags if registered else {}
    reason = tags.get("promotion.reason", "no decision recorded")
    if promoted_version(settings.bundle_root) == version:
        print(f"==> the pipeline promoted the rebuilt bundle {version}: {reason}", flush=True)
        return None
    previous = promoted_version(settings.bundle_root)
    make_champion(settings.bundle_root, client, version, "recsys-demo --rebuild", model=registered_model)
    print(
        f"==> serving the rebuilt bundle {version}: --rebuild serves what it built, although the "
        f"pipeline's rule kept {previous} ({reason})",
        flush=True,
    )
    return version


def _step(line: str, event: str) -> str | None:
    """The step named in a Dagster CLI log line of ``event``, e.g. ``... - als_model - STEP_SUCCESS - ...``."""
    marker = f" - {event} - "
    if marker not in line:
        return None
    return line.split(marker)[0].rsplit(" - ", 1)[-1].strip()


def materialise(command: list[str], root: Path, env: dict, log_path: Path) -> bool:
    """Run the materialisation with one terminal line per finished step (and every warning or
    error), the full output in ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout or ():
            log.write(line)
            if (step := _step(line, "STEP_SUCCESS")) is not None:
                print(f"    {time.time() - started:5.0f}s  done   {step}", flush=True)
            elif (step := _step(line, "STEP_FAILURE")) is not None:
                print(f"    {time.time() - started:5.0f}s  FAILED {step}", flush=True)
            elif " - WARNING - " in line or " - ERROR - " in line:
                print("    " + line.split(" - ", 2)[-1].strip()[:300], flush=True)
        return process.wait() == 0


def _tail(path: Path, lines: int = 40) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


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

    logs = settings.data_root / "logs"
    if args.rebuild or promoted_path(settings.bundle_root) is None:
        before = set(bundle_versions(settings.bundle_root))
        print(
            f"==> materialising every asset (DAGSTER_HOME={env['DAGSTER_HOME']}; "
            f"full log: {logs / 'materialize.log'})",
            flush=True,
        )
        command = [
            _bin("dagster"),
            "asset",
            "materialize",
            "-m",
            "recsys_assets.definitions",
            "--select",
            "*",
        ]
        if not materialise(command, root, env, logs / "materialize.log"):
            print(_tail(logs / "materialize.log"), file=sys.stderr)
            print(f"materialisation failed: the full log is {logs / 'materialize.log'}", file=sys.stderr)
            return 1
        # Asking for a rebuild means serving it: the pipeline itself only promotes a first bundle.
        promote_new_bundle(settings, before)
    bundle = promoted_path(settings.bundle_root)
    if bundle is None:
        print(f"no bundle is promoted in {settings.bundle_root} after materialising", file=sys.stderr)
        return 1

    processes: list[subprocess.Popen] = []
    logs.mkdir(parents=True, exist_ok=True)

    def start(command: list[str], log_name: str) -> None:
        with open(logs / log_name, "a") as log:  # the child keeps its own handle
            processes.append(
                subprocess.Popen(
                    command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    api_command = [sys.executable, "-m", "uvicorn", "recsys_serving.main:app", "--host", "127.0.0.1",
                   "--port", str(args.api_port)]  # fmt: skip
    start(api_command, "api.log")
    if not args.no_ui:
        start([_bin("dg"), "dev", "-w", "workspace.yaml", "-p", str(args.ui_port)], "dagster-ui.log")
    print(f"==> starting the API{'' if args.no_ui else ' and the Dagster UI'} (logs in {logs})", flush=True)

    def stop_on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    # Started in the background of a non-interactive shell (`cmd &`, CI scripts), a process inherits
    # SIGINT ignored and Python keeps it so: Ctrl-C or `kill -INT` would then stop nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    api = f"http://127.0.0.1:{args.api_port}"
    ui = f"http://127.0.0.1:{args.ui_port}"
    try:
        deadline = time.time() + 300
        while True:  # the banner only once everything it names answers
            status, ready = _get(f"{api}/ready")
            ui_up = args.no_ui or _get(f"{ui}/server_info")[0] == 200
            if status == 200 and ui_up:
                break
            if time.time() > deadline or any(p.poll() is not None for p in processes):
                waiting = "the API" if status != 200 else "the Dagster UI"
                print(f"{waiting} did not come up: see the logs in {logs}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        user = int(np.load(bundle / "user_ids.npy", mmap_mode="r")[0])
        liked = json.loads((bundle / "popularity.json").read_text())["overall"][:3]
        print(
            "\n==> serving bundle {version} ({dataset})\n"
            "    API:        {api}   (docs: {api}/docs, metrics: {api}/metrics)\n"
            "{ui}"
            "    try:        curl '{api}/users/{user}/recommendations?k=5&explain=true'\n"
            "                curl -X POST {api}/recommendations -H 'content-type: application/json' "
            '-d \'{{"liked": {liked}, "k": 5}}\'\n'
            "    logs:       {logs}\n"
            "    Ctrl-C stops everything.\n".format(
                version=ready["bundle_version"],
                dataset=ready.get("dataset"),
                api=api,
                user=user,
                liked=json.dumps(liked),
                logs=logs,
                ui="" if args.no_ui else f"    Dagster UI: {ui}\n",
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
