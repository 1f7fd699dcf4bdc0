"""A/B serving: bucketing, experiments started and stopped through the admin routes of a real
uvicorn server, every response and request-log row carrying experiment, arm and bundle version."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from serving_support import Server, bundle_root, settings_for

from recsys_serving.bundle import load_bundle
from recsys_serving.engine import NO_ROWS, Engine
from recsys_serving.experiments import (
    EXPERIMENT_HISTORY,
    Arm,
    Experiment,
    read_experiment,
    start_experiment,
    stop_experiment,
    unit_hash,
)
from recsys_serving.request_log import RequestLog, RequestRecord

NINETY_TEN = [
    Arm(name="control", bundle="champion", weight=9),
    Arm(name="treatment", bundle="champion", weight=1),
]


def test_bucketing_is_deterministic_weighted_and_salted() -> None:
    experiment = Experiment(id="exp-1", arms=NINETY_TEN)
    assert experiment.salt == "exp-1"  # the id salts by default
    users = range(100_000)
    arms = [experiment.assign(u).name for u in users]
    assert arms == [experiment.assign(u).name for u in users]  # deterministic
    treated = arms.count("treatment")
    # Binomial(100k, 0.1): sd = 95; 4 sd either way.
    assert abs(treated - 10_000) < 4 * np.sqrt(100_000 * 0.1 * 0.9)
    resalted = Experiment(id="exp-1", salt="other", arms=NINETY_TEN)
    moved = sum(a != resalted.assign(u).name for u, a in zip(users, arms, strict=True))
    assert moved > 0.1 * 100_000  # a new salt re-draws the split (expected: 18%)
    assert 0 <= unit_hash("s", 1) < 1 and unit_hash("s", 1) != unit_hash("t", 1)


def test_an_experiment_survives_a_restart_and_is_recorded(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    started = start_experiment(root, Experiment(id="exp-2", arms=NINETY_TEN))
    assert started.started_at is not None
    again = read_experiment(root)  # what a restarted or another replica reads
    assert again == started
    assert [again.assign(u).name for u in range(1000)] == [started.assign(u).name for u in range(1000)]
    with pytest.raises(FileNotFoundError, match="is not a bundle"):
        start_experiment(
            root, Experiment(id="x", arms=[*NINETY_TEN[:1], Arm(name="t", bundle="nope", weight=1)])
        )
    assert stop_experiment(root, "done") == started
    assert read_experiment(root) is None
    history = [json.loads(line) for line in (root / EXPERIMENT_HISTORY).read_text().splitlines()]
    assert [h["action"] for h in history] == ["start", "stop"] and history[1]["reason"] == "done"
    with pytest.raises(ValueError, match="arm names must differ"):
        Experiment(id="x", arms=[NINETY_TEN[0], NINETY_TEN[0]])


def test_api_splits_users_between_two_bundles(tmp_path: Path, bundles) -> None:
    root = bundle_root(tmp_path, bundles, "a", "b")
    a, b = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    engines = {"control": Engine(a), "treatment": Engine(b)}
    settings = settings_for(root, tmp_path, admin_api_key="secret")
    key = {"X-API-Key": "secret"}
    body = {
        "id": "exp-3",
        "arms": [
            {"name": "control", "bundle": "champion", "weight": 1},
            {"name": "treatment", "bundle": b.version, "weight": 1},
        ],
    }
    experiment = Experiment.model_validate(body)
    users = [int(u) for u in a.user_ids[:60]]
    with Server(settings) as client:
        assert client.put("/admin/experiment", json=body).status_code == 401
        missing = {
            **body,
            "arms": [body["arms"][0], {"name": "t", "bundle": "20990101T000000Z-none", "weight": 1}],
        }
        assert client.put("/admin/experiment", json=missing, headers=key).status_code == 404
        started = client.put("/admin/experiment", json=body, headers=key)
        assert started.status_code == 200, started.text
        assert started.json()["arms"] == {"control": a.version, "treatment": b.version}
        served = {}
        for user in users:
            response = client.get(
                f"/users/{user}/recommendations",
                params={"k": 5},
                headers={"X-Simulated-Time": "1500000000.5"},
            ).json()
            arm = experiment.assign(user).name
            assert response["experiment"] == {"id": "exp-3", "arm": arm}
            assert response["bundle_version"] == (a.version if arm == "control" else b.version)
            expected = engines[arm].recommend_known(engines[arm].user_row(user), 5, NO_ROWS, [], False)[0]
            assert [i["movieId"] for i in response["items"]] == engines[arm].item_ids[expected.rows].tolist()
            served[user] = arm
        assert set(served.values()) == {"control", "treatment"}
        cold = client.post(
            "/recommendations", json={"liked": a.item_ids[:3].tolist()}, headers={"X-Request-Key": "s1"}
        )
        assert cold.json()["experiment"]["arm"] == experiment.assign("request:s1").name
        stopped = client.delete("/admin/experiment", params={"reason": "enough"}, headers=key)
        assert stopped.status_code == 200 and stopped.json()["running"] is None
        after = client.get(f"/users/{users[0]}/recommendations").json()
        assert "experiment" not in after and after["bundle_version"] == a.version
        assert client.delete("/admin/experiment", headers=key).status_code == 404
    with sqlite3.connect(settings.request_log_path) as connection:
        rows = connection.execute(
            "SELECT user_id, experiment_id, arm, bundle_version, simulated_ts FROM requests WHERE user_id IS NOT NULL"
        ).fetchall()
    logged = {r[0]: r for r in rows if r[1] is not None}
    assert len(logged) == len(users)
    for user, arm in served.items():
        _, experiment_id, logged_arm, version, simulated = logged[user]
        assert (experiment_id, logged_arm, simulated) == ("exp-3", arm, 1500000000.5)
        assert version == (a.version if arm == "control" else b.version)


def test_a_broken_experiment_leaves_everyone_on_the_champion(tmp_path: Path, bundles) -> None:
    root = bundle_root(tmp_path, bundles, "a")
    (root / "EXPERIMENT.json").write_text("{not json")
    a = load_bundle(bundles["a"])
    with Server(settings_for(root, tmp_path, admin_api_key="k")) as client:
        response = client.get(f"/users/{int(a.user_ids[0])}/recommendations").json()
        assert response["bundle_version"] == a.version and "experiment" not in response
        status = client.get("/admin/experiment", headers={"X-API-Key": "k"}).json()
        assert status["running"] is None and "not a valid experiment" in status["error"]


def test_an_older_request_log_gains_the_experiment_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE requests (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, route TEXT NOT NULL, "
            "user_id INTEGER, cold_start INTEGER NOT NULL, strategy TEXT, k INTEGER, items TEXT, "
            "bundle_version TEXT, latency_ms REAL NOT NULL, status INTEGER NOT NULL)"
        )
        connection.execute(
            "INSERT INTO requests VALUES ('old', 1, '/popular', NULL, 0, NULL, 10, NULL, 'v', 1, 200)"
        )
    log = RequestLog(path, flush_seconds=0.05)
    log.log(
        RequestRecord("new", 2, "/popular", 7, False, "als", 10, [], "v", 1.0, 200, "e", "treatment", 3.0)
    )
    log.close()
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT request_id, experiment_id, arm, simulated_ts FROM requests ORDER BY ts"
        ).fetchall()
    assert rows == [("old", None, None, None), ("new", "e", "treatment", 3.0)]


def test_exploration_logs_propensities_and_epsilon_zero_changes_nothing(tmp_path: Path, bundles) -> None:
    bundle = load_bundle(bundles["a"])
    engine = Engine(bundle)
    rng = np.random.default_rng(0)
    scored = engine.recommend_known(3, 10, NO_ROWS, [], False)[0]
    seen = engine.seen_rows(3)
    same, ones = engine.explore(scored, seen, 0.0, rng)
    assert same.rows.tolist() == scored.rows.tolist() and ones == [1.0] * 10
    shuffled, propensities = engine.explore(scored, seen, 1.0, rng)
    assert not set(shuffled.rows.tolist()) & (set(scored.rows.tolist()) | set(seen.tolist()))
    assert len(set(shuffled.rows.tolist())) == 10
    free = engine.n_items - len(seen) - 10
    assert propensities == pytest.approx([1.0 / (free - i) for i in range(10)])
    replaced = [
        sum(a != b for a, b in zip(engine.explore(scored, seen, 0.3, rng)[0].rows, scored.rows, strict=True))
        for _ in range(300)
    ]
    assert abs(np.mean(replaced) / 10 - 0.3) < 0.03  # 3,000 places: sd of the share 0.008

    root = bundle_root(tmp_path, bundles, "a")
    settings = settings_for(root, tmp_path)
    users = [int(u) for u in bundle.user_ids[:20]]
    for epsilon in (0.0, 0.5):
        experiment = {
            "id": f"explore-{epsilon}",
            "epsilon": epsilon,
            "arms": [
                {"name": "control", "bundle": "champion", "weight": 1},
                {"name": "other", "bundle": "champion", "weight": 1},
            ],
        }
        with Server(settings) as client:
            assert client.put("/admin/experiment", json=experiment).status_code == 200
            for user in users:
                assert client.get(f"/users/{user}/recommendations", params={"k": 6}).status_code == 200
    with sqlite3.connect(settings.request_log_path) as connection:
        rows = connection.execute(
            "SELECT experiment_id, epsilon, items FROM requests WHERE user_id IS NOT NULL"
        ).fetchall()
    plain = [json.loads(items) for experiment, eps, items in rows if experiment == "explore-0.0"]
    explored = [json.loads(items) for experiment, eps, items in rows if experiment == "explore-0.5"]
    assert {eps for _, eps, _ in rows} == {0.0, 0.5}  # the log says whether anything was explored
    assert all(len(item) == 3 for items in plain for item in items)
    probabilities = [item[3] for items in explored for item in items]
    assert len(probabilities) == 20 * 6 and set(probabilities) >= {0.5}
    assert all(0 < p <= 0.5 for p in probabilities)


def test_off_policy_value_by_hand() -> None:
    import polars as pl

    from recsys_assets.online.offpolicy import off_policy_value

    rewarded = pl.DataFrame(
        {
            "request_id": ["r1", "r1", "r2", "r2"],
            "user_id": [1, 1, 2, 2],
            "place": [0, 1, 0, 1],
            "movie_id": [10, 11, 20, 21],
            "propensity": [0.5, 0.1, 0.5, 0.5],
            "reward": [1.0, 1.0, 0.0, 1.0],
        }
    )
    # The candidate agrees on (1, 0, 10), (1, 1, 11) and (2, 1, 21): weights 2, 10, 0, 2.
    lists = {1: [10, 11], 2: [99, 21]}
    value = off_policy_value(rewarded, lambda user, k: lists[user][:k])
    assert value["logging_policy"] == pytest.approx(0.75)
    assert value["ips"] == pytest.approx((2 + 10 + 0 + 2) / 4)
    assert value["snips"] == pytest.approx((2 + 10 + 2) / (2 + 10 + 0 + 2))
    assert value["agreement"] == pytest.approx(0.75)


def test_off_policy_estimate_runs_on_explored_traffic(tmp_path: Path, bundles, dataset) -> None:
    """The asset on a real log: every explored place is counted, and the logging bundle itself
    as the candidate agrees with every place the model chose (about half at epsilon 0.5)."""
    import dagster as dg

    from recsys_assets.defs.online import off_policy_estimate
    from recsys_assets.defs.resources import BundleStore, RequestLogStore

    bundle = load_bundle(bundles["a"])
    root = bundle_root(tmp_path, bundles, "a")
    settings = settings_for(root, tmp_path)
    arms = [
        {"name": "control", "bundle": "champion", "weight": 1},
        {"name": "other", "bundle": "champion", "weight": 1},
    ]
    with Server(settings) as client:
        client.put("/admin/experiment", json={"id": "ope", "epsilon": 0.5, "arms": arms})
        for user in bundle.user_ids[:30].tolist():
            client.get(f"/users/{user}/recommendations", params={"k": 5})

    @dg.asset(name="training_ratings")
    def training_ratings():
        return dataset["ratings"]

    result = dg.materialize(
        [training_ratings, off_policy_estimate],
        resources={
            "request_log": RequestLogStore(path=str(settings.request_log_path)),
            "bundle_store": BundleStore(root=str(root)),
        },
        run_config={"ops": {"off_policy_estimate": {"config": {"candidate_bundle": bundle.version}}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    value = result.output_for_node("off_policy_estimate")
    assert value["candidate"] == bundle.version and value["places"] == 30 * 5
    assert 0.3 < value["agreement"] < 0.7  # the model's own places, about 1 - epsilon of them
