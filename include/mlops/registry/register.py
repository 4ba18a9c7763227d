"""The register step: add a gated candidate to the registry with its metrics, lineage and model card.

``register_model`` checks that the candidate honours the SavedModel contract
(a ``serving_default`` signature with one float32 input ``inputs`` of shape
``[None, n_features]`` and one float32 output ``outputs``), then adds it to the
registry with its metrics, lineage, gate decision and a model card.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifact_store, artifacts
from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig
from include.mlops.data.snapshot import MANIFEST_FILE
from include.mlops.data.sources import snapshot_path
from include.mlops.evaluation.evaluate import PREDICTIONS_FILE
from include.mlops.evaluation.gate import GateDecision
from include.mlops.monitoring.reference import REFERENCE_FILE, build_reference
from include.mlops.registry.filesystem import EVIDENCE_DIR, TFLITE_FILE
from include.mlops.registry.fingerprint import code_version
from include.mlops.registry.model_card import model_card
from include.mlops.registry.protocol import ModelRegistry
from include.mlops.registry.serving_artifact import SAVED_MODEL, TFLITE, artifact_sha256
from include.mlops.training.modeling import check_outputs, load_split

log = logging.getLogger(__name__)

# What register copies from the run folders into assets.extra/evidence/<stage>/.
METRICS_NAME = "metrics.json"
EVALUATION_EVIDENCE = "evaluate"
EVALUATION_FILES = (METRICS_NAME, "report.html", "plot.png", PREDICTIONS_FILE)
GATE_EVIDENCE = "gate"
SNAPSHOT_EVIDENCE = "snapshot"
# Evidence is small (reports and records, ~100 KB); anything bigger is a sign of a wrong path.
EVIDENCE_MAX_BYTES = 20_000_000


class RegisterError(RuntimeError):
    """Registering cannot go ahead; the message says why and what to do."""


class CandidateModelError(RegisterError):
    """The candidate SavedModel breaks the serving contract."""


class MeasuredArtifactError(CandidateModelError):
    """The files to register are not the ones the evaluation measured (the gate judged other bytes)."""


def check_serving_signature(config: ModelConfig, model_uri: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the SavedModel and check its ``serving_default`` signature against the contract.

    Runs one prediction on a row of zeros, so a model that loads but cannot
    serve is refused here rather than by TF Serving.  Returns the signature's
    input and output shapes.
    """
    import tensorflow as tf

    path = Path(model_uri)
    if not (path / "saved_model.pb").is_file():
        raise CandidateModelError(
            f"{path} is not a SavedModel folder (no saved_model.pb); pass the train step's model_uri"
        )
    loaded = tf.saved_model.load(str(path))
    if "serving_default" not in loaded.signatures:
        raise CandidateModelError(
            f"{path} has no 'serving_default' signature (has: {', '.join(loaded.signatures) or 'none'}); "
            "export the model with a serving signature"
        )
    fn = loaded.signatures["serving_default"]
    n_features = len(config.features)
    _, inputs = fn.structured_input_signature
    if set(inputs) != {"inputs"}:
        raise CandidateModelError(f"{path}: serving_default must take one input named 'inputs', takes {sorted(inputs)}")
    spec = inputs["inputs"]
    if spec.dtype != tf.float32 or spec.shape.rank != 2 or spec.shape[1] != n_features:
        raise CandidateModelError(
            f"{path}: input 'inputs' must be float32 [None, {n_features}] (the config's {n_features} features), "
            f"is {spec.dtype.name} {spec.shape}"
        )
    outputs = fn.structured_outputs
    if set(outputs) != {"outputs"}:
        raise CandidateModelError(
            f"{path}: serving_default must return one output named 'outputs', returns {sorted(outputs)}"
        )
    width = 1 if config.task == "regression" else config.num_classes
    out_spec = outputs["outputs"]
    if out_spec.dtype != tf.float32 or out_spec.shape.rank != 2 or out_spec.shape[1] not in (None, width):
        raise CandidateModelError(
            f"{path}: output 'outputs' must be float32 [None, {width}] for a {config.task} model, "
            f"is {out_spec.dtype.name} {out_spec.shape}"
        )
    # The same output contract as train and evaluate (probabilities for classification).
    check_outputs(
        config, fn(inputs=tf.zeros((1, n_features), tf.float32))["outputs"].numpy(), source=f"{path} (one row of zeros)"
    )
    return {"input_shape": [None, n_features], "output_shape": [None, width]}


def read_evaluation(
    config: ModelConfig, evaluation_uri: str | os.PathLike[str]
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The candidate's metrics and the champion part (``{"version", "metrics"}`` or None) of evaluate's metrics.json.

    Accepts the evaluate step's folder or the file itself, and both
    ``{"metrics": {...}, "champion": {...}}`` and a flat ``{metric: value}`` file.
    """
    path = _evaluation_file(evaluation_uri)
    data = artifacts.read_json(path)
    if not isinstance(data, Mapping):
        raise RegisterError(f"{path} must hold a JSON object of metrics, holds {type(data).__name__}")
    raw = data["metrics"] if isinstance(data.get("metrics"), Mapping) else data
    known = {**METRICS[config.task], **BUDGET_METRICS}
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    missing = [m for m in config.metrics if m not in metrics]
    if missing:
        raise RegisterError(
            f"{path} lacks the config's metric(s) {', '.join(missing)} (has: {', '.join(sorted(metrics))})"
        )
    unknown = sorted(set(metrics) - set(known))
    if unknown:
        log.info("Keeping extra metrics from %s: %s", path, ", ".join(unknown))
    champion = data.get("champion") if isinstance(data.get("champion"), Mapping) else None
    return metrics, dict(champion) if champion else None


def check_measured_artifact(
    evaluation: Mapping[str, Any],
    evaluation_path: Path,
    model_uri: str | os.PathLike[str],
    tflite_uri: str | os.PathLike[str] | None,
) -> dict[str, str] | None:
    """Refuse to register files other than the ones the evaluation measured.

    A version with ``model.tflite`` is served from it, otherwise from its
    SavedModel (:mod:`include.mlops.registry.serving_artifact`), so ``model.tflite``
    goes into the version iff the evaluation measured that very file, and the
    SavedModel must be the one measured when no TFLite file was.  Returns the
    evaluation's ``measured_artifact`` (None for an evaluation that predates it).
    """
    measured = evaluation.get("measured_artifact")
    if not isinstance(measured, Mapping):
        if tflite_uri is not None:
            raise MeasuredArtifactError(
                f"{evaluation_path} does not record which artifact it measured (no measured_artifact), so "
                f"{tflite_uri} cannot be shown to be the gated file; re-run evaluate with this tflite"
            )
        log.warning("%s has no measured_artifact; assuming it measured the SavedModel %s", evaluation_path, model_uri)
        return None
    fmt, measured_sha = measured.get("format"), measured.get("sha256")
    if fmt == TFLITE:
        if tflite_uri is None:
            raise MeasuredArtifactError(
                f"the evaluation measured the TFLite file {measured.get('path')}, but no tflite was given: the "
                "version would be served from its SavedModel, which the gate did not judge; pass the evaluated "
                "tflite (--tflite)"
            )
        given_fmt, given = TFLITE, tflite_uri
    elif fmt == SAVED_MODEL:
        if tflite_uri is not None:
            raise MeasuredArtifactError(
                f"the evaluation measured the SavedModel {measured.get('path')}, not {tflite_uri}; a version "
                "holding model.tflite is served from it, so that file would be served without being gated. "
                "Register without the tflite, or evaluate the tflite first"
            )
        given_fmt, given = SAVED_MODEL, model_uri
    else:
        raise MeasuredArtifactError(f"{evaluation_path}: measured_artifact has an unknown format {fmt!r}")
    actual = artifact_sha256(given_fmt, given)
    if actual != measured_sha:
        raise MeasuredArtifactError(
            f"{given} (sha256 {actual}) is not the {given_fmt} the evaluation measured "
            f"({measured.get('path')}, sha256 {measured_sha}); register the evaluated file, or re-run evaluate "
            "on this one"
        )
    return {"format": str(fmt), "path": str(measured.get("path")), "sha256": str(measured_sha)}


def register_model(
    config: ModelConfig,
    model_uri: str | os.PathLike[str],
    evaluation_uri: str | os.PathLike[str],
    *,
    lineage: Mapping[str, Any],
    gate_decision: Mapping[str, Any] | None,
    tflite_uri: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """Register a gated candidate as the next version of ``config.serving_name``.

    ``lineage`` needs ``dag_id`` and ``run_id`` and should carry
    ``data_interval_start``/``data_interval_end``, ``created_at`` (the run's
    logical time, never now()), ``try_number``, ``data_uri``, ``data_sha256``,
    ``gate_uri`` (the gate task's decision.json) and ``candidate_fingerprint``
    (:mod:`include.mlops.registry.fingerprint`, which a later gate compares
    its candidate with); a missing
    ``code_version`` is filled from git, and a missing ``data_sha256`` from
    ``<data_uri>/data.parquet``.  A candidate the gate rejected is refused
    unless the decision records an override.

    Everything the lineage cites (the evaluation's files, the gate record,
    the snapshot manifest) is copied into the version's
    ``assets.extra/evidence/``, and the lineage points at those copies, so a
    rerun of the same run id that rewrites its run folders cannot change
    what this version says about itself.
    """
    decision = GateDecision.from_dict(gate_decision) if gate_decision is not None else None
    if decision is not None and not decision.passed:
        raise RegisterError(
            f"the gate rejected this {config.name} candidate, so it is not registered: "
            + "; ".join(decision.reasons)
            + ". Trigger the run with force to override the gate."
        )
    evaluation_path = _evaluation_file(evaluation_uri)
    evaluation = artifacts.read_json(evaluation_path)
    metrics, champion = read_evaluation(config, evaluation_path)
    measured = check_measured_artifact(evaluation, evaluation_path, model_uri, tflite_uri)
    evidence = collect_evidence(evaluation_uri, lineage)
    # A decision made without the champion (accept_without_champion) says so in the lineage too.
    lineage = {**lineage, **(decision.lineage_record() if decision is not None else {})}
    full_lineage = _complete_lineage(lineage, model_uri, evaluation_uri, tflite_uri, evidence, measured)
    signature = check_serving_signature(config, model_uri)
    reference = training_reference(config, full_lineage)

    registry: ModelRegistry = artifact_store.open_registry()
    # Paths in the mirror are recorded as URIs on object storage: the lineage is read on other machines.
    full_lineage = artifact_store.portable(full_lineage)
    result = registry.register(
        config.serving_name,
        model_uri,
        metrics=metrics,
        lineage=full_lineage,
        model_card=lambda version: model_card(
            config,
            version,
            metrics=metrics,
            champion=champion,
            lineage=full_lineage,
            gate_decision=decision,
            signature=signature,
            has_tflite=tflite_uri is not None,
        ),
        gate_decision=decision.to_dict() if decision is not None else None,
        tflite_path=tflite_uri,
        evidence=evidence,
        metadata={Path(REFERENCE_FILE).name: reference} if reference is not None else None,
    )
    summary = {"version": result.version, "created": result.created, "version_dir": str(result.version_dir)}
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**summary, "model_name": config.serving_name})
    return summary


def training_reference(config: ModelConfig, lineage: Mapping[str, Any]) -> dict[str, Any] | None:
    """The drift reference of the rows the candidate trained on: the ``train`` split of the lineage's snapshot.

    The rows are read with the train step's own loader, so the reference
    covers exactly what training saw.  Without a ``data_uri`` in the lineage
    there is no reference; the drift check then reports the version's
    requests as having none, rather than comparing them with other data.
    """
    data_uri = lineage.get("data_uri")
    if not data_uri:
        log.warning(
            "lineage has no data_uri: %s is registered without a training reference, so drift cannot be checked",
            config.name,
        )
        return None
    import pandas as pd

    rows = load_split(config, data_uri, "train")
    frame = pd.DataFrame(rows.features, columns=list(config.features))
    drift, sha = config.monitor.drift, lineage.get("data_sha256")
    reference = build_reference(
        frame, config.features, drift.bins, snapshot_sha256=sha, sample_rows=drift.reference_sample_rows
    )
    log.info("training reference of %s: %d rows of %s", config.name, reference["rows"], data_uri)
    return reference


def collect_evidence(evaluation_uri: str | os.PathLike[str], lineage: Mapping[str, Any]) -> dict[str, Path]:
    """The run files a version's lineage cites, keyed by their place under ``assets.extra/evidence/``.

    The evaluation's outputs, the gate task's record and the snapshot
    manifest; files over :data:`EVIDENCE_MAX_BYTES` (never expected: the data
    itself is cited by sha256, not copied) are left out with a warning.
    """
    found: dict[str, Path] = {}
    evaluation = Path(evaluation_uri)
    if evaluation.is_dir():
        for name in EVALUATION_FILES:
            found[f"{EVALUATION_EVIDENCE}/{name}"] = evaluation / name
    else:
        found[f"{EVALUATION_EVIDENCE}/{METRICS_NAME}"] = evaluation
    if lineage.get("gate_uri"):
        gate = Path(lineage["gate_uri"])
        found[f"{GATE_EVIDENCE}/{gate.name}"] = gate
        found[f"{GATE_EVIDENCE}/{gate.stem}.md"] = gate.with_suffix(".md")
    if lineage.get("data_uri"):
        data = Path(lineage["data_uri"])
        manifest = (data if data.is_dir() else data.parent) / MANIFEST_FILE
        found[f"{SNAPSHOT_EVIDENCE}/{MANIFEST_FILE}"] = manifest
    evidence: dict[str, Path] = {}
    for rel, path in found.items():
        if not path.is_file():
            log.info("no %s to keep as evidence (%s)", rel, path)
        elif path.stat().st_size > EVIDENCE_MAX_BYTES:
            log.warning(
                "not copying %s into the version: %d bytes is over %d", path, path.stat().st_size, EVIDENCE_MAX_BYTES
            )
        else:
            evidence[rel] = path
    if lineage.get("gate_uri") and f"{GATE_EVIDENCE}/{Path(lineage['gate_uri']).name}" not in evidence:
        raise RegisterError(f"the gate record {lineage['gate_uri']} cited by the lineage does not exist")
    return evidence


def _evaluation_file(evaluation_uri: str | os.PathLike[str]) -> Path:
    path = Path(evaluation_uri)
    path = path / METRICS_NAME if path.is_dir() else path
    if not path.is_file():
        raise RegisterError(
            f"no evaluation metrics at {path}; pass the evaluate step's output folder as evaluation_uri"
        )
    return path


def _complete_lineage(
    lineage: Mapping[str, Any],
    model_uri: str | os.PathLike[str],
    evaluation_uri: str | os.PathLike[str],
    tflite_uri: str | os.PathLike[str] | None,
    evidence: Mapping[str, Path],
    measured: Mapping[str, str] | None,
) -> dict[str, Any]:
    missing = [key for key in ("dag_id", "run_id") if not lineage.get(key)]
    if missing:
        raise RegisterError(f"lineage lacks {', '.join(missing)}: pass the Airflow run's dag_id and run_id")
    full: dict[str, Any] = {
        "data_interval_start": None,
        "data_interval_end": None,
        "created_at": None,
        "try_number": None,
        "data_uri": None,
        "data_sha256": None,
        **artifacts.to_jsonable(dict(lineage)),
    }
    if not full.get("code_version"):
        full["code_version"] = code_version()
    if not full["data_sha256"] and full["data_uri"]:
        data_file = snapshot_path(full["data_uri"])
        if data_file.is_file():
            full["data_sha256"] = artifacts.sha256_file(data_file)
    for key in ("created_at", "data_sha256", "try_number"):
        if full[key] in (None, ""):
            log.warning("lineage has no %s; the model card will show it as unknown", key)

    def copy_of(rel: str) -> str | None:
        return f"{EVIDENCE_DIR}/{rel}" if rel in evidence else None

    # Where the files came from: run folders that a rerun of this run id may rewrite later.
    full["sources"] = {
        "model_uri": str(model_uri),
        "tflite_uri": str(tflite_uri) if tflite_uri else None,
        "evaluation_uri": str(evaluation_uri),
        "gate_uri": full.pop("gate_uri", None),
        "data_uri": full["data_uri"],
        "evidence": {rel: str(path) for rel, path in evidence.items()},
    }
    # What the lineage cites from now on: paths relative to the version folder, inside the version.
    full.update(
        model_uri=".",
        tflite_uri=TFLITE_FILE if tflite_uri else None,
        evaluation_uri=f"{EVIDENCE_DIR}/{EVALUATION_EVIDENCE}",
        metrics_uri=copy_of(f"{EVALUATION_EVIDENCE}/{METRICS_NAME}"),
        gate_uri=next(
            (copy_of(rel) for rel in evidence if rel.startswith(GATE_EVIDENCE + "/") and rel.endswith(".json")), None
        ),
        snapshot_manifest_uri=copy_of(f"{SNAPSHOT_EVIDENCE}/{MANIFEST_FILE}"),
        measured_artifact=dict(measured) if measured else None,
        paths_relative_to="the version folder",
    )
    return full
