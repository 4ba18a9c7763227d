"""register on real run folders: evidence that a rerun cannot rewrite, and only the gated bytes are registered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from model_factory import make_saved_model

from include.mlops.artifacts import atomic_write_json, atomic_write_text, run_dir, sha256_file
from include.mlops.config import ModelConfig, find_model_config
from include.mlops.data.snapshot import snapshot
from include.mlops.evaluation import gate as gate_lib
from include.mlops.evaluation.evaluate import evaluate
from include.mlops.registry.filesystem import CorruptVersionError, Registry
from include.mlops.registry.register import MeasuredArtifactError, RegisterError, register_model
from include.mlops.training.savedmodel import convert_to_tflite
from include.mlops.training.train import train

DIABETES = find_model_config("diabetes")
DAG_ID = DIABETES.dag_id
RUN_ID = "scheduled__2026-11-27T00:00:00+00:00"
START, END = dt.datetime(2026, 11, 26, tzinfo=dt.UTC), dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


def write_gate_record(config: ModelConfig, evaluation: dict[str, Any], out: Path) -> Path:
    """decision.json and decision.md as the gate task writes them (forced, so that any model may pass)."""
    decision = gate_lib.decide_for_config(config, evaluation["metrics"], None, force=True)
    record = {"decision": decision.to_dict(), "route": "register", "champion_version": None}
    atomic_write_json(out / "decision.json", record)
    atomic_write_text(out / "decision.md", f"# Gate `gate`: register\n\n{decision.to_markdown()}\n")
    return out / "decision.json"


def run_until_gate(config: ModelConfig, epochs: int) -> dict[str, Any]:
    """snapshot -> train -> evaluate -> gate record, into runs/<dag>/<run>/ as the lifecycle DAG lays them out."""
    snap = snapshot(config, START, END, run_dir(DAG_ID, RUN_ID, "snapshot"))
    trained = train(config, snap["data_uri"], run_dir(DAG_ID, RUN_ID, "train"), {"epochs": epochs})
    evaluated = evaluate(config, trained["model_uri"], snap["data_uri"], run_dir(DAG_ID, RUN_ID, "evaluate"))
    decision = write_gate_record(config, evaluated, run_dir(DAG_ID, RUN_ID, "gate"))
    return {"snapshot": snap, "model_uri": trained["model_uri"], "evaluation": evaluated, "decision": decision}


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_rerun_of_the_same_run_id_cannot_rewrite_a_versions_evidence(artifact_root: Path, tmp_path: Path) -> None:
    first = run_until_gate(DIABETES, epochs=2)
    lineage = {
        "dag_id": DAG_ID,
        "run_id": RUN_ID,
        "data_interval_start": START.isoformat(),
        "data_interval_end": END.isoformat(),
        "created_at": END.isoformat(),
        "try_number": 1,
        "data_uri": first["snapshot"]["data_uri"],
        "gate_uri": str(first["decision"]),
    }
    record = json.loads(first["decision"].read_text())
    result = register_model(
        DIABETES,
        first["model_uri"],
        Path(first["evaluation"]["metrics_uri"]).parent,
        lineage=lineage,
        gate_decision=record["decision"],
        out=tmp_path / "register",
    )
    registry = Registry(artifact_root / "models")
    version_dir = registry.version_dir("diabetes", result["version"])
    before = files_of(version_dir)

    written = json.loads((version_dir / "assets.extra" / "lineage.json").read_text())
    assert written["try_number"] == 1
    evaluate_dir = run_dir(DAG_ID, RUN_ID, "evaluate")
    # The lineage cites copies inside the version, each byte-identical to the run file it was copied from.
    cited = {
        written["metrics_uri"]: evaluate_dir / "metrics.json",
        f"{written['evaluation_uri']}/report.html": evaluate_dir / "report.html",
        written["gate_uri"]: first["decision"],
        written["snapshot_manifest_uri"]: run_dir(DAG_ID, RUN_ID, "snapshot") / "manifest.json",
    }
    for inside, run_file in cited.items():
        assert (version_dir / inside).read_bytes() == run_file.read_bytes(), inside
    assert written["sources"]["evaluation_uri"] == str(evaluate_dir)

    # The rerun (a reprocessing backfill under the same run id) retrains and re-evaluates into the same folders.
    second = run_until_gate(DIABETES, epochs=5)
    assert second["evaluation"]["metrics"]["mae"] != first["evaluation"]["metrics"]["mae"]
    assert (evaluate_dir / "metrics.json").read_bytes() != before["assets.extra/evidence/evaluate/metrics.json"]

    registry.verify("diabetes", result["version"])
    assert files_of(version_dir) == before
    kept = json.loads((version_dir / written["metrics_uri"]).read_text())
    assert kept["metrics"]["mae"] == pytest.approx(first["evaluation"]["metrics"]["mae"])


def test_evidence_copies_are_covered_by_the_checksums(artifact_root: Path, tmp_path: Path) -> None:
    model = make_saved_model(tmp_path / "model", len(DIABETES.features), 1, seed=1)
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({"metrics": {"mae": 44.0, "rmse": 50.0, "r2": 0.5}}))
    (evaluation / "report.html").write_text("<p>report</p>")
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    decision = gate_lib.decide_for_config(DIABETES, {"mae": 44.0, "rmse": 50.0, "r2": 0.5}, None, force=True)
    (gate_dir / "decision.json").write_text(json.dumps({"decision": decision.to_dict()}))
    lineage = {"dag_id": DAG_ID, "run_id": RUN_ID, "gate_uri": str(gate_dir / "decision.json"), "try_number": 2}
    result = register_model(
        DIABETES, model, evaluation, lineage=lineage, gate_decision=decision.to_dict(), out=tmp_path / "r"
    )
    version_dir = Path(result["version_dir"])
    sums = json.loads((version_dir / "assets.extra" / "checksums.json").read_text())
    assert {
        "assets.extra/evidence/evaluate/metrics.json",
        "assets.extra/evidence/evaluate/report.html",
        "assets.extra/evidence/gate/decision.json",
    } <= set(sums)
    assert "try 2" in (version_dir / "assets.extra" / "model_card.md").read_text()

    copy = version_dir / "assets.extra" / "evidence" / "evaluate" / "metrics.json"
    copy.write_text(json.dumps({"metrics": {"mae": 1.0}}))  # rewriting the evidence in place is caught
    with pytest.raises(CorruptVersionError, match=r"evidence/evaluate/metrics.json has changed"):
        Registry(artifact_root / "models").verify("diabetes", result["version"])


def test_register_refuses_when_the_cited_gate_record_is_missing(artifact_root: Path, tmp_path: Path) -> None:
    model = make_saved_model(tmp_path / "model", len(DIABETES.features), 1, seed=1)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"mae": 44.0, "rmse": 50.0, "r2": 0.5}}))
    lineage = {"dag_id": DAG_ID, "run_id": RUN_ID, "gate_uri": str(tmp_path / "gate" / "decision.json")}
    with pytest.raises(RegisterError, match=r"gate record .* does not exist"):
        register_model(DIABETES, model, metrics, lineage=lineage, gate_decision=None, out=tmp_path / "r")
    assert Registry(artifact_root / "models").versions("diabetes") == []


# --------------------------------------------------------------------------- what was measured is what is registered


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two SavedModels with the diabetes contract, and a real TFLite conversion of each."""
    base = tmp_path_factory.mktemp("tiny")
    models = {
        name: make_saved_model(base / name, len(DIABETES.features), 1, seed=seed) for name, seed in [("a", 1), ("b", 2)]
    }
    return {
        **models,
        "a_tflite": convert_to_tflite(models["a"], base / "a.tflite"),
        "b_tflite": convert_to_tflite(models["b"], base / "b.tflite"),
        "snapshot": snapshot(DIABETES, START, END, base / "snapshot")["data_uri"],
    }


def _register(tiny: dict[str, Path], evaluation: Path, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("lineage", {"dag_id": DAG_ID, "run_id": RUN_ID})
    return register_model(DIABETES, tiny["a"], evaluation, gate_decision=None, out=tmp_path / "r", **kwargs)


def test_the_registered_tflite_is_the_file_the_evaluation_measured(
    artifact_root: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    renamed = dataclasses.replace(DIABETES, serving_name="diabetes_prod")
    evaluated = evaluate(renamed, tiny["a"], tiny["snapshot"], tmp_path / "evaluate", tflite_uri=str(tiny["a_tflite"]))
    measured = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["measured_artifact"]
    assert measured == evaluated["measured_artifact"]
    assert measured == {"format": "tflite", "path": str(tiny["a_tflite"]), "sha256": sha256_file(tiny["a_tflite"])}

    result = register_model(
        renamed,
        tiny["a"],
        tmp_path / "evaluate",
        lineage={"dag_id": DAG_ID, "run_id": RUN_ID},
        gate_decision=None,
        tflite_uri=tiny["a_tflite"],
        out=tmp_path / "r",
    )
    version_dir = Path(result["version_dir"])
    assert version_dir == artifact_root / "models" / "diabetes_prod" / "1"
    assert hashlib.sha256((version_dir / "model.tflite").read_bytes()).hexdigest() == measured["sha256"]
    assert json.loads((version_dir / "assets.extra" / "lineage.json").read_text())["measured_artifact"] == measured
    assert "model.tflite" in (version_dir / "assets.extra" / "model_card.md").read_text()


def test_register_refuses_artifacts_the_evaluation_did_not_measure(
    artifact_root: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    on_tflite = tmp_path / "eval_tflite"
    evaluate(DIABETES, tiny["a"], tiny["snapshot"], on_tflite, tflite_uri=str(tiny["a_tflite"]))
    on_saved_model = tmp_path / "eval_saved_model"
    evaluate(DIABETES, tiny["a"], tiny["snapshot"], on_saved_model)

    with pytest.raises(
        MeasuredArtifactError, match=r"b.tflite \(sha256 [0-9a-f]{64}\) is not the tflite the evaluation"
    ):
        _register(tiny, on_tflite, tmp_path, tflite_uri=tiny["b_tflite"])
    with pytest.raises(MeasuredArtifactError, match=r"measured the TFLite file .* but no tflite was given"):
        _register(tiny, on_tflite, tmp_path)
    with pytest.raises(MeasuredArtifactError, match=r"measured the SavedModel .* served without being gated"):
        _register(tiny, on_saved_model, tmp_path, tflite_uri=tiny["a_tflite"])
    with pytest.raises(MeasuredArtifactError, match="is not the saved_model the evaluation measured"):
        register_model(
            DIABETES, tiny["b"], on_saved_model, lineage={"dag_id": DAG_ID, "run_id": RUN_ID},
            gate_decision=None, out=tmp_path / "r",
        )  # fmt: skip
    assert Registry(artifact_root / "models").versions("diabetes") == []

    registered = _register(tiny, on_saved_model, tmp_path)  # the SavedModel it measured is accepted
    assert not (Path(registered["version_dir"]) / "model.tflite").exists()


def test_register_arguments_carry_the_try_number_and_the_cited_run_files() -> None:
    from mlops_airflow.lifecycle import _register_arguments

    candidate = {
        "model_uri": "/runs/x/train/model",
        "tflite_uri": None,
        "evaluation_uri": "/runs/x/evaluate",
        "decision_uri": "/runs/x/gate/decision.json",
    }
    pulls = {"snapshot": {"data_uri": "/runs/x/snapshot/data.parquet", "sha256": "0" * 64}}

    def xcom_pull(task_ids: str | None = None, key: str | None = None) -> Any:
        if key == "candidate":
            return candidate if task_ids == "gate" else None
        return pulls.get(task_ids)

    context = {
        "ti": SimpleNamespace(xcom_pull=xcom_pull, try_number=3),
        "dag_run": SimpleNamespace(run_id=RUN_ID, dag_id=DAG_ID, run_type="backfill"),
        "data_interval_start": pendulum.instance(START),
        "data_interval_end": pendulum.instance(END),
    }
    lineage = _register_arguments(context, DIABETES)["lineage"]
    assert lineage["try_number"] == 3
    assert lineage["gate_uri"] == "/runs/x/gate/decision.json"
    assert lineage["data_uri"] == "/runs/x/snapshot/data.parquet"


def test_a_drift_triggered_run_trains_on_the_data_up_to_the_detection_and_says_who_asked() -> None:
    # Airflow 3.3 gives an asset-triggered run no data interval; "the day before it ran" is the interval the
    # nightly run (and so the serving version) already trained on, and the retraining would change nothing.
    from mlops_airflow.lifecycle import _register_arguments, data_interval

    detected = pendulum.datetime(2026, 11, 27, 15, 30, tz="UTC")
    event = SimpleNamespace(
        asset=SimpleNamespace(name="retrain__diabetes"),
        source_dag_id="monitor__diabetes",
        source_run_id="scheduled__2026-11-27T14:30:00+00:00",
        timestamp=detected,
        extra={"score": 0.4, "drifted_features": ["bmi"], "version": 1, "report_uri": "/r.html"},
    )
    context = {
        "dag_run": SimpleNamespace(
            run_id="asset_triggered__x", dag_id=DAG_ID, run_type="asset_triggered", run_after=detected
        ),
        "triggering_asset_events": {"retrain__diabetes": [event]},
        "data_interval_start": None,
        "data_interval_end": None,
    }
    start, end = data_interval(context, DIABETES)  # type: ignore[arg-type]
    assert end == detected and start == detected.subtract(days=DIABETES.source.lookback_days)
    nightly_end = detected.start_of("day")
    assert end != nightly_end, "never the interval the nightly run trained on"

    context["ti"] = SimpleNamespace(
        xcom_pull=lambda task_ids=None, key=None: (
            {"model_uri": "/m", "evaluation_uri": "/e", "decision_uri": "/d.json"}
            if key == "candidate" and task_ids == "gate"
            else {"sha256": "0" * 64, "data_uri": "/s"}
            if task_ids == "snapshot"
            else None
        ),
        try_number=1,
    )
    lineage = _register_arguments(context, DIABETES)["lineage"]  # type: ignore[arg-type]
    assert lineage["data_interval_end"] == detected.isoformat()
    assert lineage["triggered_by"]["monitor_run_id"] == "scheduled__2026-11-27T14:30:00+00:00"
    assert lineage["triggered_by"]["drifted_features"] == ["bmi"]


# --------------------------------------------------------------------------- the champion's figures on the card


def _card_row(card: str, metric: str) -> list[str]:
    line = next(line for line in card.splitlines() if line.startswith(f"| {metric} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_cards_champion_figures_are_the_champions_own(
    artifact_root: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    # Version 1, registered with its evidence (report, plot, predictions) in assets.extra/, labelled stable.
    first = evaluate(DIABETES, tiny["a"], tiny["snapshot"], tmp_path / "run1" / "evaluate")
    gate_1 = write_gate_record(DIABETES, first, tmp_path / "run1" / "gate")
    lineage_1 = {"dag_id": DAG_ID, "run_id": RUN_ID, "gate_uri": str(gate_1)}
    v1 = register_model(
        DIABETES, tiny["a"], tmp_path / "run1" / "evaluate", lineage=lineage_1,
        gate_decision=json.loads(gate_1.read_text())["decision"], out=tmp_path / "run1" / "register",
    )  # fmt: skip
    registry = Registry(artifact_root / "models")
    registry.set_label("diabetes", "stable", v1["version"])
    version_dir = Path(v1["version_dir"])
    registered = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())
    folder_mb = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file()) / 1_000_000
    assert folder_mb > 1.5 * registered["size_mb"]  # the metadata beside the model is no part of its size

    # The next candidate is evaluated against version 1 as the champion, and registered.
    second = evaluate(
        DIABETES, tiny["b"], tiny["snapshot"], tmp_path / "run2" / "evaluate",
        champion_uri=str(version_dir), champion_version=v1["version"],
    )  # fmt: skip
    champion = second["champion"]["metrics"]
    assert champion["size_mb"] == pytest.approx(registered["size_mb"], rel=1e-12)
    for metric in ("mae", "rmse", "r2"):
        assert champion[metric] == pytest.approx(registered[metric], rel=1e-6)
    gate_2 = write_gate_record(DIABETES, second, tmp_path / "run2" / "gate")
    v2 = register_model(
        DIABETES, tiny["b"], tmp_path / "run2" / "evaluate",
        lineage={"dag_id": DAG_ID, "run_id": RUN_ID, "gate_uri": str(gate_2)},
        gate_decision=json.loads(gate_2.read_text())["decision"], out=tmp_path / "run2" / "register",
    )  # fmt: skip
    card = (Path(v2["version_dir"]) / "assets.extra" / "model_card.md").read_text()
    assert "| metric | candidate | champion (v1) | change |" in card
    assert _card_row(card, "size_mb")[2] == f"{registered['size_mb']:.6g}"
    assert _card_row(card, "mae")[2] == f"{registered['mae']:.6g}"


# --------------------------------------------------------------------------- deciding without the champion


def test_a_version_gated_without_its_champion_says_so_in_its_lineage_and_card(
    artifact_root: Path, tmp_path: Path
) -> None:
    model = make_saved_model(tmp_path / "model", len(DIABETES.features), 1, seed=1)
    metrics = {"mae": 44.0, "rmse": 50.0, "r2": 0.5, "size_mb": 0.04, "latency_ms": 1.0}
    unscored = {"version": 3, "reason": "model expects 9 features, the config has 10", "model_uri": "/m/diabetes/3"}
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "champion": None, "champion_unscored": unscored})
    )
    decision = gate_lib.decide_for_config(
        DIABETES, metrics, None, champion_unscored=unscored, accept_without_champion=True
    )
    assert decision.passed and not decision.override
    result = register_model(
        DIABETES, model, evaluation, lineage={"dag_id": DAG_ID, "run_id": RUN_ID},
        gate_decision=decision.to_dict(), out=tmp_path / "r",
    )  # fmt: skip
    extra = Path(result["version_dir"]) / "assets.extra"
    lineage = json.loads((extra / "lineage.json").read_text())
    assert lineage["accepted_without_champion"] is True
    assert lineage["champion_unscored"] == unscored
    gate = json.loads((extra / "gate.json").read_text())
    assert gate["accepted_without_champion"] is True and gate["champion_unscored"] == unscored
    card = (extra / "model_card.md").read_text()
    why = "the champion (version 3) could not be scored: model expects 9 features, the config has 10"
    assert f"No champion figures: {why}." in card
    assert f"> **Accepted without a champion**: {why}. The run was triggered with `accept_without_champion`" in card
    assert f"- **Accepted without champion**: {why}" in card
    assert "first version" not in card


def test_a_version_gated_with_its_champion_records_no_acceptance(artifact_root: Path, tmp_path: Path) -> None:
    model = make_saved_model(tmp_path / "model", len(DIABETES.features), 1, seed=1)
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"mae": 44.0, "rmse": 50.0, "r2": 0.5}}))
    decision = gate_lib.decide_for_config(DIABETES, {"mae": 44.0, "rmse": 50.0, "r2": 0.5}, None, force=True)
    result = register_model(
        DIABETES, model, tmp_path / "metrics.json", lineage={"dag_id": DAG_ID, "run_id": RUN_ID},
        gate_decision=decision.to_dict(), out=tmp_path / "r",
    )  # fmt: skip
    extra = Path(result["version_dir"]) / "assets.extra"
    lineage = json.loads((extra / "lineage.json").read_text())
    assert lineage["accepted_without_champion"] is False and lineage["champion_unscored"] is None
    card = (extra / "model_card.md").read_text()
    assert "Accepted without champion" not in card and "first version" in card
