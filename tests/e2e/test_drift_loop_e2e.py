"""The retraining loop on the real stack, from shifted traffic to ``drift_persists``.

The stack of ``make run`` (tests/monitor_stack.py) over a copy of the diabetes config whose loop turns in
minutes: a cooldown of :data:`COOLDOWN_S` seconds, ``max_retrains`` 2, drift acted on in 1 of 1 windows of
:data:`WINDOW_MINUTES` minutes, two training epochs (and no quality bar at the gate, which two epochs cannot
meet: the gate's quality is tested elsewhere, its budgets stay).  Monitor runs are triggered by hand over REST;
the tests run in file order:

1. the nightly run deploys version 1 from the data that had arrived by its interval, which ended
   :data:`NIGHTLY_DAYS_AGO` days ago;
2. shifted traffic: a monitor run requests one retraining (one Asset event); the lifecycle run it starts
   trains on the most recent complete data (its interval ends at the event, not days ago) and registers
   version 2, which serves;
3. a second shift, which retraining cannot fix (the source never holds such rows): the next monitor run
   judges the traffic against version 2's reference and requests the episode's second and last retraining;
   that run snapshots the same rows as version 2 (no day has arrived since), so its candidate is version 2
   itself and nothing is registered;
4. the shift persists: after ``max_retrains`` requests the monitor raises ``drift_persists`` naming the
   features, mails it, and no further request or lifecycle run follows.

Why the nightly interval ended days ago: every row of the bundled diabetes data has arrived by 2026-11-20,
so with the bundled start date a retraining run would snapshot exactly the nightly run's rows and, with the
same config and seed, make version 1 again (the gate registers nothing: test_monitor_e2e.py shows that end).
The copy starts the source :data:`START_DAYS_AGO` days back instead, so rows still arrive every day, and gives
the lifecycle a weekly cron that last fired :data:`NIGHTLY_DAYS_AGO` days ago: the retraining run then sees
three days of rows the nightly run did not, and step 2 can check that the new version's reference is used.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_stack import AirflowStack
from monitor_stack import (
    LIFECYCLE,
    MODEL,
    MONITOR,
    asset_events,
    diabetes_config,
    monitor_run,
    monitoring_stack,
    retrain_runs,
    taken,
    traffic,
    wait_for,
)
from smtp_server import Inbox, running_inbox, smtp_connection

from include.mlops.artifacts import run_dir
from include.mlops.monitoring.reference import read_reference
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.version_files import LINEAGE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# Longer than a two-epoch lifecycle run and its traffic take, so that the next monitor run falls after the
# cooldown and still within two cooldowns of the last request (the same drift episode).
COOLDOWN_S = 150
WINDOW_MINUTES = 2
MAX_RETRAINS = 2
NIGHTLY_DAYS_AGO = 3
START_DAYS_AGO = 14
FIRST_SHIFT = {"bmi": 3.0, "s5": 3.0}
LASTING_SHIFT = {"bp": 3.0, "s1": 3.0}


def weekly_cron(days_ago: int) -> str:
    """A weekly cron that last fired ``days_ago`` days ago (this hour), so its next run is days away too."""
    fired = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    return f"0 {fired.hour} * * {(fired.weekday() + 1) % 7}"  # cron counts weekdays from Sunday = 0


def a_loop_in_minutes(document: dict[str, Any]) -> None:
    document["source"]["start_date"] = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=START_DAYS_AGO)
    document["train"].update(epochs=2, patience=1)
    document["gate"] = {"budgets": document["gate"]["budgets"]}
    document["monitor"].update(
        window_minutes=WINDOW_MINUTES, cooldown_hours=COOLDOWN_S / 3600, max_retrains=MAX_RETRAINS
    )
    document["monitor"]["drift"]["persistence"] = {"k": 1, "n": 1}


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    with running_inbox() as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, inbox: Inbox) -> Iterator[AirflowStack]:
    models = diabetes_config(tmp_path_factory.mktemp("models") / "models", a_loop_in_minutes)
    env = {"AIRFLOW_CONN_MLOPS_ALERTS": smtp_connection(inbox.port), "MLOPS_PROMETHEUS_SCRAPE_INTERVAL": "2s"}
    with monitoring_stack(
        tmp_path_factory.mktemp("drift-loop-e2e"), models, env, lifecycle_schedule=weekly_cron(NIGHTLY_DAYS_AGO)
    ) as running:
        yield running


# What each step leaves for the next: monitor trigger times, run ids.
loop: dict[str, Any] = {}


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def snapshot_manifest(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    return read(run_dir(LIFECYCLE, run_id, "snapshot", root=stack.artifact_root) / "manifest.json")


def retrain_decision(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    return read(run_dir(MONITOR, run_id, "request_retrain", root=stack.artifact_root) / "decision.json")


def drift_result(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    return read(run_dir(MONITOR, run_id, "drift", root=stack.artifact_root) / "drift.json")


def registry(stack: AirflowStack) -> Registry:
    return Registry(stack.artifact_root / "models")


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def events_of(stack: AirflowStack) -> list[dict[str, Any]]:
    return wait_for(lambda: asset_events(stack), 120, "the monitor's asset events")


def monitor_run_in_the_episode(stack: AirflowStack, after: dt.datetime, **shift: float) -> tuple[str, dt.datetime]:
    """Shifted traffic, then a monitor run past the cooldown of the request at ``after``, still in its episode."""
    time.sleep(max(0.0, (after + dt.timedelta(seconds=COOLDOWN_S) - dt.datetime.now(dt.UTC)).total_seconds()))
    traffic(stack, 300, drift=shift)
    at = dt.datetime.now(dt.UTC)
    assert at - after < dt.timedelta(seconds=2 * COOLDOWN_S), (
        f"the monitor run at {at} falls out of the episode of the request at {after}: "
        f"the lifecycle run and the traffic took longer than COOLDOWN_S ({COOLDOWN_S} s)"
    )
    run_id, _ = monitor_run(stack, at)
    return run_id, at


def finished_retrain(stack: AirflowStack, monitor_run_id: str) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The lifecycle run that ``monitor_run_id``'s Asset event started, once finished, and its task states."""
    [run] = wait_for(
        lambda: [r for r in retrain_runs(stack) if monitor_run_id in (r.get("note") or "")],
        300,
        f"the lifecycle run requested by {monitor_run_id}, with its note",
    )
    [done] = stack.wait_for_runs(LIFECYCLE, {run["dag_run_id"]}, timeout=600)
    states = stack.task_states(LIFECYCLE, run["dag_run_id"])
    assert done["state"] == "success", states
    return done, states


def test_the_nightly_run_deploys_version_1(stack: AirflowStack) -> None:
    [nightly] = stack.wait_for_runs(LIFECYCLE, count=1, run_type="scheduled", timeout=900)
    assert nightly["state"] == "success", stack.task_states(LIFECYCLE, nightly["dag_run_id"])
    manifest = snapshot_manifest(stack, nightly["dag_run_id"])
    ended = utc(manifest["interval_end"])
    assert (
        dt.timedelta(days=NIGHTLY_DAYS_AGO) <= dt.datetime.now(dt.UTC) - ended < dt.timedelta(days=NIGHTLY_DAYS_AGO + 1)
    )
    assert manifest["partitions"][-1] == (ended - dt.timedelta(days=1)).date().isoformat(), manifest
    assert registry(stack).versions(MODEL) == [1] and registry(stack).label_version(MODEL, "stable") == 1
    # The monitor's own scheduled run, with nothing served in its window; it must not overlap the loop's runs.
    [first] = stack.wait_for_runs(MONITOR, count=1, run_type="scheduled", timeout=600)
    assert taken(stack.task_states(MONITOR, first["dag_run_id"])) == {"insufficient_data"}
    loop["nightly"] = manifest


def test_shifted_traffic_retrains_once_on_recent_data(stack: AirflowStack) -> None:
    assert retrain_runs(stack) == []
    traffic(stack, 300, drift=FIRST_SHIFT)
    at = dt.datetime.now(dt.UTC)
    run_id, states = monitor_run(stack, at)
    assert "request_retrain" in taken(states), (states, retrain_decision(stack, run_id))
    assert retrain_decision(stack, run_id)["retrains_in_episode"] == 0
    [event] = events_of(stack)
    assert event["source_run_id"] == run_id and {"bmi", "s5"} <= set(event["extra"]["drifted_features"]), event
    loop.update(first_at=at, first_run=run_id)

    done, states = finished_retrain(stack, run_id)
    # The most recent complete data: the interval ends at the drift event (not at the nightly interval's end, nor
    # at midnight), over the source's lookback, and so takes in the days that arrived since the nightly run.
    manifest = snapshot_manifest(stack, done["dag_run_id"])
    assert utc(manifest["interval_end"]) == utc(event["timestamp"]), (manifest, event)
    assert utc(manifest["interval_end"]) - utc(manifest["interval_start"]) == dt.timedelta(days=1)
    last_day = (utc(event["timestamp"]) - dt.timedelta(days=1)).date()
    assert manifest["partitions"][-1] == last_day.isoformat(), manifest
    # Every day the nightly run saw, and the days since: a day's rows each.
    nightly = loop["nightly"]["partitions"]
    assert manifest["partitions"][: len(nightly)] == nightly, manifest
    assert len(manifest["partitions"]) - len(nightly) >= NIGHTLY_DAYS_AGO, manifest
    assert manifest["rows"] > loop["nightly"]["rows"], manifest

    # New rows, so a new model: version 2 is registered and serves; its lineage names the drift that asked for it.
    assert states["register"] == "success" and states["deploy"] == "success", states
    versions = registry(stack)
    assert versions.versions(MODEL) == [1, 2] and versions.label_version(MODEL, "stable") == 2
    lineage = read(versions.version_dir(MODEL, 2) / LINEAGE_FILE)
    assert lineage["run_id"] == done["dag_run_id"] and lineage["snapshot_sha256"] == manifest["sha256"], lineage
    assert lineage["triggered_by"]["monitor_run_id"] == run_id, lineage
    assert read_reference(versions.version_dir(MODEL, 2))["snapshot_sha256"] == manifest["sha256"]
    loop["retrained"] = manifest


def test_a_shift_retraining_cannot_fix_is_judged_against_the_new_version_and_retrains_again(
    stack: AirflowStack,
) -> None:
    run_id, at = monitor_run_in_the_episode(stack, loop["first_at"], **LASTING_SHIFT)
    states = stack.task_states(MONITOR, run_id)
    assert "request_retrain" in taken(states), (states, retrain_decision(stack, run_id))

    # The window's requests were served by version 2 and judged against version 2's training reference.
    drift = drift_result(stack, run_id)
    # (All of the traffic, and perhaps the deploy's own check of version 2.)
    assert set(drift["versions"]) == {"2"} and drift["versions"]["2"] >= 300, drift["versions"]
    assert drift["primary_version"] == 2, drift
    reference = read_reference(registry(stack).version_dir(MODEL, 2))
    assert reference is not None
    for feature in LASTING_SHIFT:
        assert drift["features"][feature]["drifted"], drift["features"][feature]
        assert drift["features"][feature]["reference_mean"] == pytest.approx(reference["features"][feature]["mean"])
    assert retrain_decision(stack, run_id)["retrains_in_episode"] == 1
    events = events_of(stack)
    assert [e["source_run_id"] for e in events] == [loop["first_run"], run_id], events
    loop.update(second_at=at, second_run=run_id)

    # No day has arrived since version 2 was trained: the same rows, config, seed and code make version 2 again,
    # so the gate registers nothing and version 2 keeps serving.  Retraining cannot fix this shift.
    done, states = finished_retrain(stack, run_id)
    manifest = snapshot_manifest(stack, done["dag_run_id"])
    assert manifest["sha256"] == loop["retrained"]["sha256"], (
        "a day of rows arrived between the two retraining runs (did the test run across midnight UTC?)",
        manifest,
        loop["retrained"],
    )
    assert utc(manifest["interval_end"]) == utc(events[-1]["timestamp"]), (manifest, events[-1])
    assert states["skip_deploy"] == "success" and states["register"] == "skipped", states
    gate = read(run_dir(LIFECYCLE, done["dag_run_id"], "gate", root=stack.artifact_root) / "decision.json")
    assert gate["route"] == "identical" and gate["identical_to_champion"]["champion_version"] == 2, gate
    assert registry(stack).versions(MODEL) == [1, 2] and registry(stack).label_version(MODEL, "stable") == 2


def test_the_loop_ends_in_drift_persists_with_no_further_request(stack: AirflowStack, inbox: Inbox) -> None:
    run_id, _ = monitor_run_in_the_episode(stack, loop["second_at"], **LASTING_SHIFT)
    states = stack.task_states(MONITOR, run_id)
    assert states["request_retrain"] == "skipped", states
    decision = retrain_decision(stack, run_id)
    assert decision["action"] == "drift_persists" and decision["retrains_in_episode"] == MAX_RETRAINS, decision
    assert set(LASTING_SHIFT) <= set(decision["window"]["drifted_features"]), decision
    assert all(feature in decision["reason"] for feature in LASTING_SHIFT), decision["reason"]

    # Recorded, alerted and mailed, naming the features.
    monitoring = stack.artifact_root / "monitoring" / MODEL
    requests = read(monitoring / "retrain_requests.json")["requests"]
    assert [(r["kind"], r["monitor_run_id"]) for r in requests] == [
        ("retrain", loop["first_run"]),
        ("retrain", loop["second_run"]),
        ("drift_persists", run_id),
    ], requests
    alerts = [json.loads(line) for line in (monitoring / "alerts.jsonl").read_text().splitlines()]
    [persists] = [a for a in alerts if a["kind"] == "drift_persists"]
    assert persists["run_id"] == run_id and set(LASTING_SHIFT) <= set(persists["drifted_features"]), persists
    [mail] = wait_for(
        lambda: [m for _, m in inbox.messages if "drift persists" in m["Subject"]], 60, "the drift_persists mail"
    )
    assert all(feature in mail["Subject"] for feature in LASTING_SHIFT), mail["Subject"]

    # No further request: still two Asset events and two retraining runs, once the scheduler has had its turns.
    time.sleep(15)
    assert len(events_of(stack)) == MAX_RETRAINS
    runs = retrain_runs(stack)
    assert len(runs) == MAX_RETRAINS and all(r["state"] == "success" for r in runs), runs
    assert registry(stack).versions(MODEL) == [1, 2]
