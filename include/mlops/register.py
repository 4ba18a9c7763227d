"""The register step: add a gated candidate to the registry with its metrics, lineage and model card.

``register_model`` checks that the candidate honours the SavedModel contract
(a ``serving_default`` signature with one float32 input ``inputs`` of shape
``[None, n_features]`` and one float32 output ``outputs``), then adds it to the
registry with its metrics, lineage, gate decision and a model card.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import BUDGET_METRICS, METRICS, PROJECT_ROOT, ModelConfig
from include.mlops.gate import GateDecision
from include.mlops.model_card import model_card
from include.mlops.modeling import check_outputs
from include.mlops.registry import Registry

log = logging.getLogger(__name__)

CODE_VERSION_ENV = "MLOPS_CODE_VERSION"


class RegisterError(RuntimeError):
    """Registering cannot go ahead; the message says why and what to do."""


class CandidateModelError(RegisterError):
    """The candidate SavedModel breaks the serving contract."""


def code_version() -> str:
    """``$MLOPS_CODE_VERSION`` (set in images built without .git), else ``git rev-parse HEAD``, else "unknown"."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


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
    path = Path(evaluation_uri)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise RegisterError(
            f"no evaluation metrics at {path}; pass the evaluate step's output folder as evaluation_uri"
        )
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
    logical time, never now()), ``data_uri`` and ``data_sha256``; a missing
    ``code_version`` is filled from git, and a missing ``data_sha256`` from
    ``<data_uri>/data.parquet``.  A candidate the gate rejected is refused
    unless the decision records an override.
    """
    decision = GateDecision.from_dict(gate_decision) if gate_decision is not None else None
    if decision is not None and not decision.passed:
        raise RegisterError(
            f"the gate rejected this {config.name} candidate, so it is not registered: "
            + "; ".join(decision.reasons)
            + ". Trigger the run with force to override the gate."
        )
    full_lineage = _complete_lineage(lineage, model_uri, evaluation_uri, tflite_uri)
    metrics, champion = read_evaluation(config, evaluation_uri)
    signature = check_serving_signature(config, model_uri)

    registry = Registry()
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
    )
    summary = {"version": result.version, "created": result.created, "version_dir": str(result.version_dir)}
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**summary, "model_name": config.serving_name})
    return summary


def _complete_lineage(
    lineage: Mapping[str, Any],
    model_uri: str | os.PathLike[str],
    evaluation_uri: str | os.PathLike[str],
    tflite_uri: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    missing = [key for key in ("dag_id", "run_id") if not lineage.get(key)]
    if missing:
        raise RegisterError(f"lineage lacks {', '.join(missing)}: pass the Airflow run's dag_id and run_id")
    full: dict[str, Any] = {
        "data_interval_start": None,
        "data_interval_end": None,
        "created_at": None,
        "data_uri": None,
        "data_sha256": None,
        **artifacts.to_jsonable(dict(lineage)),
    }
    if not full.get("code_version"):
        full["code_version"] = code_version()
    if not full["data_sha256"] and full["data_uri"]:
        data_file = Path(full["data_uri"])
        data_file = data_file / "data.parquet" if data_file.is_dir() else data_file
        if data_file.is_file():
            full["data_sha256"] = artifacts.sha256_file(data_file)
    for key in ("created_at", "data_sha256"):
        if not full[key]:
            log.warning("lineage has no %s; the model card will show it as unknown", key)
    full.update(
        model_uri=str(model_uri), evaluation_uri=str(evaluation_uri), tflite_uri=str(tflite_uri) if tflite_uri else None
    )
    return full
