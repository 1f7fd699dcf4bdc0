"""The production shape, proven where it can be here: the compose file and Dockerfile against the
code, Dagster and MLflow on a real PostgreSQL server, and asset storage behind an fsspec URL."""

from __future__ import annotations

import ast
import importlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from upath import UPath

from recsys_assets.definitions import all_assets, all_checks
from recsys_assets.defs.modeling import ALSModelConfig
from recsys_assets.defs.partitions import rating_batches
from recsys_assets.defs.resources import (
    AtomicFileIOManager,
    BundleStore,
    DatasetSource,
    MLflowTracking,
    RequestLogStore,
    StreamStore,
)
from recsys_assets.defs.streaming import rating_batch_sensor
from recsys_assets.settings import Settings
from recsys_serving.settings import ServingSettings

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
FAST = ALSModelConfig(tune=False, factors=16, iterations=5, bootstrap_samples=20)
SMALL_SYNTHETIC = {
    "dataset": "synthetic",
    "synthetic_users": 200,
    "synthetic_movies": 300,
    "synthetic_ratings": 8_000,
}


# --------------------------------------------------------------------------- compose and image


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_vars_the_code_reads() -> set[str]:
    names = set()
    for source in (ROOT / "recsys_assets").rglob("*.py"):
        names |= set(re.findall(r"\bRECSYS_[A-Z_]*[A-Z]\b", source.read_text()))
    names |= {f"RECSYS_{field.upper()}" for field in ServingSettings.model_fields}
    dagster_yaml = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())

    def env_refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "env" and isinstance(value, str):
                    yield value
                else:
                    yield from env_refs(value)

    return names | set(env_refs(dagster_yaml))


def command_prefix(command: list[str]) -> list[str]:
    """The executable and its subcommands: the tokens before the first option."""
    prefix = []
    for token in command:
        if token.startswith("-"):
            break
        prefix.append(token)
    return prefix


def test_every_service_command_is_a_real_entry_point_of_the_image() -> None:
    services = compose()["services"]
    ours = {name: s for name, s in services.items() if s.get("image", "").startswith("movielens-recsys")}
    assert set(ours) >= {
        "mlflow",
        "dagster-code",
        "dagster-stream-code",
        "dagster-webserver",
        "dagster-daemon",
        "api",
    }
    commands = [s["command"] for s in ours.values()]
    commands += [
        s["healthcheck"]["test"][1:]
        for s in ours.values()
        if s.get("healthcheck", {}).get("test", [""])[0] == "CMD"
    ]
    for command in commands:
        prefix = command_prefix(command)
        executable = BIN / prefix[0]
        if prefix[0] != "python":
            assert executable.is_file(), f"{prefix[0]} is not installed by the project"
            completed = subprocess.run(
                [str(executable), *prefix[1:], "--help"], capture_output=True, text=True, check=False
            )
            assert completed.returncode == 0, f"{' '.join(prefix)} --help failed: {completed.stderr[-500:]}"
        for flag, value in zip(command, command[1:], strict=False):
            if flag in ("-m", "--module-name"):
                assert importlib.util.find_spec(value) is not None, value
            if flag == "-w":
                assert (ROOT / value).is_file(), value
        for token in command:
            if re.fullmatch(r"[a-z_.]+:[a-z_]+", token):  # module:attribute (uvicorn)
                module, attribute = token.split(":")
                assert hasattr(importlib.import_module(module), attribute), token


def test_workspace_points_at_the_code_servers_of_the_compose_file() -> None:
    services = compose()["services"]
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text())
    for entry in workspace["load_from"]:
        server = entry["grpc_server"]
        command = services[server["host"]]["command"]
        assert command[command.index("-p") + 1] == str(server["port"])
        assert command[command.index("--location-name") + 1] == server["location_name"]
    local = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert {e["python_module"]["location_name"] for e in local["load_from"]} == {
        e["grpc_server"]["location_name"] for e in workspace["load_from"]
    }


def test_every_referenced_file_exists_and_every_variable_is_provided() -> None:
    document = compose()
    services = document["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line

    shared = document["x-recsys-env"]
    missing = env_vars_the_code_reads() - set(shared)
    assert not missing, f"read by the code but not given to the containers: {sorted(missing)}"
    for name in ("dagster-code", "dagster-stream-code", "dagster-webserver", "dagster-daemon", "api"):
        assert services[name]["environment"] == shared, name

    # No secrets in the file: passwords come from .env, which .env.example documents.
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert required and required <= example
    assert "change-me" not in text
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), key


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM (\S+) AS (\S+)$", text, flags=re.M)[1:]
    return {
        name: f"FROM {base}\n{body}"
        for base, name, body in zip(parts[::3], parts[1::3], parts[2::3], strict=True)
    }


def test_dockerfile_is_multi_stage_cache_friendly_non_root_with_a_healthcheck() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["build", "api-build", "api", "runtime"]  # runtime last: the default
    assert all(stage.startswith("FROM python:3.11-slim") for stage in stages.values())
    for name, copied in (("build", "COPY recsys_assets"), ("api-build", "COPY recsys_serving")):
        text = stages[name]
        assert (
            text.index("COPY pyproject.toml")
            < text.index("pip install -r requirements.txt")
            < text.index(copied)
        )
    # The API image holds the serving package only, with the core dependencies.
    assert "recsys_assets" not in stages["api-build"].replace("without recsys_assets", "")
    assert "['pipeline']" not in stages["api-build"] and "['pipeline']" in stages["build"]
    for name in ("api", "runtime"):
        users = re.findall(r"^USER (\S+)", stages[name], flags=re.M)
        assert users and users[-1] not in ("root", "0"), name
        assert "HEALTHCHECK" in stages[name] and "/health" in stages[name], name
    services = compose()["services"]
    assert services["api"]["build"]["target"] == "api"
    assert services["dagster-daemon"]["build"]["target"] == "runtime"


def test_the_serving_package_needs_only_the_core_dependencies() -> None:
    """Everything recsys_serving imports comes from the core dependency list (or what those
    require): `pip install .` without extras, the api image, serves."""
    import tomllib
    from importlib.metadata import distribution, packages_distributions

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed, queue = set(), [Requirement(d) for d in project["dependencies"]]
    while queue:  # the core dependencies and, transitively, what they require
        requirement = queue.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in allowed:
            continue
        allowed.add(name)
        for extra_requirement in distribution(name).requires or []:
            nested = Requirement(extra_requirement)
            if (
                nested.marker is None
                or nested.marker.evaluate({"extra": ""})
                or any(nested.marker.evaluate({"extra": e}) for e in requirement.extras)
            ):
                queue.append(nested)
    # The package's own imports (its dependencies import their optional extras only when present).
    imported = set()
    for source in (ROOT / "recsys_serving").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    owners = packages_distributions()
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "recsys_serving"}
    assert "recsys_assets" not in third_party and "dagster" not in third_party
    used = {owner.lower().replace("_", "-") for module in third_party for owner in owners[module]}
    mlflow = {name for name in used if name.startswith("mlflow")}
    assert mlflow  # imported lazily, for alias mode only: the `alias` extra
    used -= mlflow
    assert used and not used - allowed, sorted(used - allowed)


# --------------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict]:
    """A throwaway PostgreSQL server on loopback with databases ``dagster`` and ``mlflow``."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (Debian package postgresql; .ci/run installs it)")
    run_as: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory)
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(directory, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = directory / "data"

    def run(*command: str) -> None:
        subprocess.run([*run_as, *command], check=True, capture_output=True, text=True)

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "recsys", "-A", "trust", "--no-sync")
        run(
            str(binaries / "pg_ctl"),
            "-D", str(data),
            "-l", str(directory / "server.log"),
            "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w", "start",
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started: {exc.stderr.strip()[-300:]}")
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user="recsys", dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE dagster")
        cursor.execute("CREATE DATABASE mlflow")
    connection.close()
    try:
        yield {"port": port, "user": "recsys", "password": "recsys", "host": "127.0.0.1"}
    finally:
        subprocess.run(
            [*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def _query(server: dict, database: str, sql: str) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(
        host=server["host"], port=server["port"], user=server["user"], dbname=database
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


def test_dagster_and_mlflow_on_postgres(
    postgres: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.instance.ref import InstanceRef
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")  # the production file itself
    for name, value in {
        "DAGSTER_PG_HOST": postgres["host"],
        "DAGSTER_PG_PORT": str(postgres["port"]),
        "DAGSTER_PG_USER": postgres["user"],
        "DAGSTER_PG_PASSWORD": postgres["password"],
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    data_root = tmp_path / "data"
    tracking_uri = f"postgresql+psycopg2://{postgres['user']}:{postgres['password']}@{postgres['host']}:{postgres['port']}/mlflow"
    stream = StreamStore(root=str(data_root / "stream"))
    resources = {
        "source": DatasetSource(data_root=str(data_root), allow_download=False, **SMALL_SYNTHETIC),
        "io_manager": AtomicFileIOManager(base_dir=str(data_root / "assets")),
        "mlflow_tracking": MLflowTracking(
            tracking_uri=tracking_uri, artifact_root=(tmp_path / "mlartifacts").as_uri()
        ),
        "bundle_store": BundleStore(root=str(data_root / "bundles")),
        "request_log": RequestLogStore(path=str(data_root / "request_log.sqlite")),
        "stream": stream,
    }
    try:
        result = dg.materialize(
            [*all_assets, *all_checks],
            resources=resources,
            instance=instance,
            run_config=dg.RunConfig(ops={"als_model": FAST}),
        )
        assert result.success
        folders = stream.folders()
        folders.incoming.mkdir(parents=True)
        (folders.incoming / "ratings-000001.csv").write_text(
            "userId,movieId,rating,timestamp\n1,1,4.0,1600000000\n"
        )
        sensed = rating_batch_sensor(dg.build_sensor_context(instance=instance, resources={"stream": stream}))
        [request] = sensed.run_requests
        instance.add_dynamic_partitions(rating_batches.name, [request.partition_key])
    finally:
        instance.dispose()

    assert _query(postgres, "dagster", f"SELECT status FROM runs WHERE run_id = '{result.run_id}'") == [
        ("SUCCESS",)
    ]
    materialized = _query(
        postgres,
        "dagster",
        "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
    )
    assert len(materialized) == len(result.get_asset_materialization_events()) >= 10
    assert _query(postgres, "dagster", "SELECT partition FROM dynamic_partitions") == [("ratings-000001",)]
    versions = _query(postgres, "mlflow", "SELECT name, version FROM model_versions")
    assert versions == [("movielens-als", 1)]
    aliases = _query(postgres, "mlflow", "SELECT alias FROM registered_model_aliases ORDER BY alias")
    assert aliases == [("challenger",), ("champion",)]
    assert _query(postgres, "mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0] >= 1


# --------------------------------------------------------------------------- object storage


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_asset_storage_behind_an_fsspec_url(scheme: str, tmp_path: Path) -> None:
    base = (
        (tmp_path / "object-store").as_uri()
        if scheme == "file"
        else f"memory://recsys-test-{time.time_ns()}/assets"
    )
    data_root = tmp_path / "data"
    selection = ["raw_movies", "raw_ratings", "training_ratings", "interactions", "temporal_splits"]
    result = dg.materialize(
        [*all_assets, *all_checks],
        selection=selection,
        resources={
            "source": DatasetSource(data_root=str(data_root), allow_download=False, **SMALL_SYNTHETIC),
            "io_manager": AtomicFileIOManager(base_dir=base),
            "stream": StreamStore(root=str(data_root / "stream")),
            # required by the unselected assets too
            "mlflow_tracking": MLflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
            "bundle_store": BundleStore(root=str(data_root / "bundles")),
            "request_log": RequestLogStore(path=str(data_root / "request_log.sqlite")),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success  # every downstream step loaded its inputs back from the URL
    store = UPath(base)
    ratings = pl.read_parquet((store / "raw_ratings.parquet").read_bytes())
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["raw_ratings"]]
    assert len(ratings) == event.step_materialization_data.materialization.metadata["dagster/row_count"].value
    assert sorted(p.name for p in (store / "temporal_splits").iterdir()) == [
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    assert not [p for p in store.iterdir() if p.name.startswith(".")], "temporary objects left behind"
    assert not (data_root / "assets").exists()


def documented_settings() -> dict[str, str]:
    """RECSYS_* variable -> its documented default, from the README's Configuration table."""
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`RECSYS_"):
            continue
        names = re.findall(r"`(RECSYS_[A-Z_]+|_[A-Z_]+)`", cells[0])
        stem = names[0].rsplit("_", 1)[0]  # `RECSYS_SYNTHETIC_USERS` / `_MOVIES`: same stem
        names = [stem + n if n.startswith("_") else n for n in names]
        defaults = [cells[1]] if len(names) == 1 else re.split(r" / |, ", cells[1])
        assert len(defaults) == len(names), line
        documented |= {n: d.strip().strip("`") for n, d in zip(names, defaults, strict=True)}
    return documented


def test_readme_configuration_table_matches_the_code() -> None:
    """Every RECSYS_* variable the code reads is in the README's table, with the default the code
    has (serving settings and the pipeline's scalar settings)."""
    documented = documented_settings()
    read = {
        n for n in env_vars_the_code_reads() if n.startswith("RECSYS_") and not n.startswith("RECSYS_TEST_")
    }
    assert not read - set(documented), f"not documented: {sorted(read - set(documented))}"
    pipeline = Settings.from_env({"RECSYS_PROJECT_ROOT": str(ROOT)})
    defaults = {f"RECSYS_{n.upper()}": f.default for n, f in ServingSettings.model_fields.items()}
    defaults |= {
        f"RECSYS_{n.upper()}": getattr(pipeline, n)
        for n in ("dataset", "allow_download", "synthetic_users", "synthetic_movies", "synthetic_ratings")
    }
    defaults["RECSYS_SYNTHETIC_SEED"] = pipeline.synthetic_seed
    checked = 0
    for name, value in defaults.items():
        if value is None:
            continue
        text = documented[name].removeprefix("./")
        if isinstance(value, bool):
            assert text.lower() == str(value).lower(), name
        elif isinstance(value, int | float):
            assert float(text.replace(",", "")) == float(value), name
        else:
            assert text == str(value), name
        checked += 1
    assert checked >= 15  # the scalar defaults: the check must not silently compare nothing


def test_prometheus_scrapes_the_api_and_grafana_shows_metrics_it_exports(tmp_path: Path) -> None:
    """The compose stack's monitoring: Prometheus scrapes the api service where it serves
    /metrics, Grafana's provisioned datasource is that Prometheus, and every metric a dashboard
    panel queries is one the API really exports (read from a running app's /metrics)."""
    import json

    from fastapi.testclient import TestClient

    from recsys_serving.main import create_app
    from recsys_serving.settings import ServingSettings

    services = compose()["services"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    host, port = scrape["static_configs"][0]["targets"][0].split(":")
    assert (
        host == "api"
        and f"{port}:{port}" in services["api"]["ports"]
        and scrape["metrics_path"] == "/metrics"
    )
    assert "--port" in services["api"]["command"] and port in services["api"]["command"]
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    datasource = source["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/recsys.json").read_text())
    queried = {
        name.removesuffix("_bucket")
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(recsys_[a-z_]+)", target["expr"])
        if panel["datasource"]["uid"] == datasource["uid"]
    }
    settings = ServingSettings(
        bundle_root=str(tmp_path), request_log=str(tmp_path / "log.sqlite"), rate_limit_per_second=0
    )
    with TestClient(create_app(settings)) as client:
        client.get("/popular")  # 503 with nothing promoted: still counted
        exported = set(re.findall(r"^# TYPE (recsys_[a-z_]+) ", client.get("/metrics").text, flags=re.M))
    exported |= {name.removesuffix("_total") for name in exported} | {f"{name}_total" for name in exported}
    assert queried and not queried - exported, (
        f"panels query metrics the API does not export: {queried - exported}"
    )
    panels = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    for label in ("arm", "bundle_version"):
        assert f"by ({label})" in panels or f"by (le, {label})" in panels or f", {label})" in panels
