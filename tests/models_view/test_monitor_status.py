"""The model's health in the Models view: the newest decided monitor run, read by include.mlops.registry.monitor_status."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from models_view.monitor_runs import write_monitor_run

from benchmarks.ui import write_history
from include.mlops import artifacts
from include.mlops.config import ModelConfig, load_model_config
from include.mlops.registry.catalog import Catalog, UnknownError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"
CONFIG = load_model_config(MODELS / "diabetes.yaml")
END = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("health")
    write_history(root, CONFIG, versions=1, runs=2)
    return root


@pytest.fixture
def root(registry: Path, tmp_path: Path) -> Path:
    """A copy of the registry and lifecycle runs, without any monitor run."""
    copy = tmp_path / "artifacts"
    shutil.copytree(registry, copy)
    return copy


def health(root: Path, config: ModelConfig = CONFIG) -> dict[str, Any]:
    return Catalog(root, MODELS).health(config.name).to_dict()


def test_no_monitor_run_yet_is_a_state_not_an_error(root: Path) -> None:
    assert health(root) == {
        "monitor_dag_id": "monitor__diabetes",
        "state": "no_run",
        "run": None,
        "outcomes": [],
        "window": {},
        "slo": None,
        "drift": None,
        "retrain": None,
        "has_report": False,
        "report_uri": None,
        "problems": [],
    }


def test_a_healthy_run_has_each_slo_figure_against_its_objective(root: Path) -> None:
    run_id = "scheduled__2026-11-27T09:00:00+00:00"
    write_monitor_run(root, CONFIG, run_id, END)
    got = health(root)
    assert got["state"] == "measured" and got["outcomes"] == ["healthy"]
    assert got["run"] == {
        "folder": artifacts.safe_segment(run_id),
        "run_id": run_id,
        "run_type": "scheduled",
        "date": "2026-11-27T09:00:00+00:00",
    }
    assert got["window"] == {"start": "2026-11-27T09:00:00+00:00", "end": "2026-11-27T10:00:00+00:00", "minutes": 60}
    rows = {r["figure"]: r for r in got["slo"]["rows"]}
    assert [r["figure"] for r in got["slo"]["rows"]] == ["requests", "request_rate", "error_ratio", "p95_ms", "p99_ms"]
    assert rows["p95_ms"] | {"reason": None} == {
        "figure": "p95_ms",
        "value": 42.0,
        "objective_key": "p95_latency_ms",
        "direction": "at most",
        "objective": 100.0,
        "met": True,
        "reason": None,
    }
    assert rows["requests"]["direction"] == "at least" and rows["requests"]["met"] is True
    assert rows["request_rate"]["objective"] is None and rows["request_rate"]["met"] is None
    assert got["slo"]["status"] == "ok" and got["drift"]["status"] == "ok" and not got["drift"]["drifted"]
    assert got["retrain"] is None and got["has_report"] and got["problems"] == []
    report = Catalog(root, MODELS).monitor_report("diabetes", got["run"]["folder"])
    assert report.read_text().startswith("<!") and str(report) == got["report_uri"]


def test_a_drifted_run_lists_each_feature_with_its_test_and_effect_sizes(root: Path) -> None:
    write_monitor_run(root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END, drifted={"bmi": 1e-6, "bp": 0.004})
    got = health(root)
    assert got["outcomes"] == ["drift"]
    assert got["retrain"]["action"] == "request" and "retraining request 1 of at most 2" in got["retrain"]["reason"]
    features = got["drift"]["features"]
    assert [f["name"] for f in features[:2]] == ["bmi", "bp"], "drifted first, the smallest adjusted p first"
    assert features[0] == {
        "name": "bmi",
        "test": "ks",
        "statistic": 0.31,
        "p_value": 1e-07,
        "p_adjusted": 1e-06,
        "psi": 0.41,
        "out_of_range": 0.125,
        "drifted": True,
        "reason": "ks statistic 0.31, Holm-adjusted p 1e-06 <= false_alarm_rate 0.01 (version 1)",
    }
    assert len(features) == len(CONFIG.features) and not any(f["drifted"] for f in features[2:])
    assert got["drift"]["false_alarm_rate"] == 0.01 and got["drift"]["rows"] == 400


def test_drift_that_persists_after_the_retrains_allowed_is_its_own_outcome(root: Path) -> None:
    write_monitor_run(
        root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END, drifted={"bmi": 1e-6}, retrain_requests=2
    )
    got = health(root)
    assert got["outcomes"] == ["drift", "drift_persists"] and got["retrain"]["action"] == "drift_persists"


def test_without_prometheus_the_slos_are_insufficient_data_with_the_reason(root: Path) -> None:
    write_monitor_run(root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END, figures=None)
    got = health(root)
    assert got["outcomes"] == ["insufficient_data"]
    assert got["slo"]["status"] == "insufficient_data"
    assert all(r["value"] is None and r["met"] is None for r in got["slo"]["rows"])
    assert all(r["reason"].startswith("SLOs not measured: Prometheus at") for r in got["slo"]["rows"])
    assert got["drift"]["status"] == "ok", "the drift verdict is still there"


def test_the_run_whose_window_ends_last_wins_and_an_undecided_run_is_skipped(root: Path) -> None:
    write_monitor_run(root, CONFIG, "scheduled__2026-11-27T08:00:00+00:00", END - dt.timedelta(hours=1), figures=None)
    # A manual run's folder date is its window's end: later in the name, earlier in time than the 09:00 run's window.
    write_monitor_run(
        root, CONFIG, "manual__2026-11-27T09:30:00+00:00", END - dt.timedelta(minutes=30), drifted={"bmi": 1e-6}
    )
    write_monitor_run(root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END)
    assert health(root)["run"]["run_id"] == "scheduled__2026-11-27T09:00:00+00:00"
    # Running now: slo and drift wrote, decide has not.
    newer = write_monitor_run(root, CONFIG, "scheduled__2026-11-27T10:00:00+00:00", END + dt.timedelta(hours=1))
    (newer / "decide" / "outcome.json").unlink()
    assert health(root)["run"]["run_id"] == "scheduled__2026-11-27T09:00:00+00:00"


def test_an_outcome_without_its_window_is_ordered_by_its_folder_date(root: Path) -> None:
    old = write_monitor_run(root, CONFIG, "scheduled__2026-11-27T07:00:00+00:00", END - dt.timedelta(hours=2))
    write_monitor_run(root, CONFIG, "scheduled__2026-11-27T06:00:00+00:00", END - dt.timedelta(hours=3), figures=None)
    record = artifacts.read_json(old / "decide" / "outcome.json")
    for key in ("run_id", "window_start", "window_end"):  # as a decide task before they were recorded wrote it
        del record[key]
    artifacts.atomic_write_json(old / "decide" / "outcome.json", record)
    got = health(root)
    assert got["run"]["folder"] == old.name and got["run"]["run_id"] is None
    assert got["window"]["end"] == (END - dt.timedelta(hours=2)).isoformat(), "the drift result's window"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"outcomes": "healthy"}', '{"outcomes": []}', ""])
def test_a_corrupt_outcome_is_shown_unreadable_with_its_path(root: Path, content: str) -> None:
    run = write_monitor_run(root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END)
    (run / "decide" / "outcome.json").write_text(content)
    got = health(root)
    assert got["state"] == "unreadable" and got["run"]["folder"] == run.name
    assert got["problems"] == [
        f"{run / 'decide' / 'outcome.json'} is unreadable: not JSON with a list of outcomes, as the decide task writes"
    ]


def test_a_mangled_or_missing_measurement_is_named_and_the_rest_still_shown(root: Path) -> None:
    run = write_monitor_run(root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END)
    (run / "slo" / "slo.json").write_text('{"figures": [1, 2]}')
    shutil.rmtree(run / "drift")
    got = health(root)
    assert got["state"] == "measured" and got["outcomes"] == ["healthy"]
    assert got["slo"] == {"state": "unreadable", "path": str(run / "slo" / "slo.json")}
    assert got["drift"] == {"state": "missing", "path": str(run / "drift" / "drift.json")}
    assert got["problems"] == [f"{run / 'slo' / 'slo.json'} is unreadable"]


@pytest.mark.parametrize("run", ["..", "../../models", ".x", "RUN/../..", "nope"])
def test_monitor_reports_outside_known_runs_are_unknown(root: Path, run: str) -> None:
    real = write_monitor_run(root, CONFIG, "scheduled__2026-11-27T09:00:00+00:00", END)
    with pytest.raises(UnknownError):
        Catalog(root, MODELS).monitor_report("diabetes", run.replace("RUN", real.name))
    with pytest.raises(UnknownError):
        Catalog(root, MODELS).health("nope")


def test_what_the_decide_task_writes_is_what_the_view_reads(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import pendulum

    from mlops_airflow.monitoring import build_monitor_dag

    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
    run_id = "manual__2026-11-27T10:00:00+00:00"
    run = write_monitor_run(root, CONFIG, run_id, END, drifted={"bmi": 1e-6})
    results = {
        "slo": artifacts.read_json(run / "slo" / "slo.json"),
        "drift": artifacts.read_json(run / "drift" / "drift.json"),
    }
    shutil.rmtree(run / "decide")
    ti = SimpleNamespace(xcom_pull=lambda task_ids: results[task_ids], xcom_push=lambda key, value: None)
    context = {"ti": ti, "dag_run": SimpleNamespace(run_id=run_id, run_after=pendulum.instance(END))}
    assert build_monitor_dag(CONFIG).get_task("decide").choose_branch(context) == ["request_retrain"]
    got = health(root)
    assert got["state"] == "measured" and got["outcomes"] == ["drift"] and got["run"]["run_id"] == run_id
    assert got["window"] == {"start": "2026-11-27T09:00:00+00:00", "end": "2026-11-27T10:00:00+00:00", "minutes": 60}
    assert got["has_report"] and got["drift"]["features"][0]["name"] == "bmi"
