"""The model card names what requested a version: a drift detection's retraining Asset event."""

from __future__ import annotations

from pathlib import Path

from include.mlops.config import load_model_config
from include.mlops.registry.model_card import model_card

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LINEAGE = {"dag_id": "lifecycle__diabetes", "run_id": "asset_triggered__2026-11-27T10:05:00+00:00"}


def card(lineage: dict) -> str:
    config = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
    return model_card(config, 2, metrics={"r2": 0.4}, champion=None, lineage=lineage, gate_decision=None)


def test_card_of_a_drift_requested_version_names_the_monitor_run_and_score() -> None:
    trigger = {
        "asset": "retrain__diabetes",
        "monitor_run_id": "scheduled__2026-11-27T09:00:00+00:00",
        "drift_score": 0.41,
        "drifted_features": ["bmi", "bp"],
        "report_uri": "/artifacts/runs/monitor__diabetes/x/decide/report.html",
    }
    text = card({**LINEAGE, "triggered_by": trigger})
    line = next(line for line in text.splitlines() if line.startswith("- **Triggered by**"))
    assert "`retrain__diabetes`" in line
    assert "`scheduled__2026-11-27T09:00:00+00:00`" in line
    assert "drift score 0.41" in line and "bmi, bp" in line and "report.html" in line


def test_card_of_a_scheduled_version_has_no_trigger_line() -> None:
    assert "Triggered by" not in card({**LINEAGE, "triggered_by": None})
