"""The evaluate step: task metrics, size and latency of a candidate (and the champion) on the test rows.

Predictions come from the serving signature of the SavedModel, or from the
TFLite interpreter when a quantized variant is evaluated, so the numbers
describe what would actually be served.  Writes ``metrics.json``,
``predictions.parquet``, ``plot.png`` and a human-readable ``report.html``.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.artifacts import atomic_write_json, step_output, to_jsonable
from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig
from include.mlops.evaluation.plot import evaluation_plot
from include.mlops.evaluation.reports import render
from include.mlops.registry.fingerprint import version_fingerprint
from include.mlops.registry.serving_artifact import (
    SAVED_MODEL,
    TFLITE,
    artifact_sha256,
    artifact_size_bytes,
    served_artifact,
)
from include.mlops.training.modeling import (
    Dataset,
    ModelingError,
    check_outputs,
    load_serving_fn,
    load_split,
    load_tflite_fn,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.parquet"

BYTES_PER_MB = 1_000_000
LATENCY_CALLS = 50
WARMUP_CALLS = 5
_PREDICT_BATCH = 1024


def _predict_all(predict: Callable[[np.ndarray], np.ndarray], features: np.ndarray) -> np.ndarray:
    import numpy as np

    chunks = [predict(features[i : i + _PREDICT_BATCH]) for i in range(0, len(features), _PREDICT_BATCH)]
    return np.concatenate(chunks, axis=0).astype("float64")


def batch_latency_ms(
    predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, calls: int = LATENCY_CALLS
) -> float:
    """Median wall time of one prediction of ``rows`` (the batch), after warm-up calls."""
    for _ in range(WARMUP_CALLS):
        predict(rows)
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(rows)
        timings.append((time.perf_counter() - started) * 1000.0)
    return float(statistics.median(timings))


def measure_latency_ms(
    predict: Callable[[np.ndarray], np.ndarray], row: np.ndarray, calls: int = LATENCY_CALLS
) -> float:
    """Median wall time of a one-row prediction, after warm-up calls."""
    return batch_latency_ms(predict, row.reshape(1, -1), calls)


def task_metrics(config: ModelConfig, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Every metric of the config's task (``METRICS[task]``) from the model's raw outputs."""
    import numpy as np
    from sklearn import metrics as skm

    if config.task == "regression":
        predicted = outputs[:, 0]
        mse = float(skm.mean_squared_error(labels, predicted))
        return {
            "mae": float(skm.mean_absolute_error(labels, predicted)),
            "mse": mse,
            "rmse": math.sqrt(mse),
            "r2": float(skm.r2_score(labels, predicted)) if len(labels) > 1 else float("nan"),
        }
    classes = list(range(config.num_classes or outputs.shape[1]))
    probabilities = np.clip(outputs, 1e-7, 1.0)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    predicted = outputs.argmax(axis=1)
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "macro_f1": float(skm.f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "log_loss": float(skm.log_loss(labels, probabilities, labels=classes)),
    }


def _score_model(
    config: ModelConfig, test: Dataset, model_uri: str | os.PathLike[str], tflite_uri: str | os.PathLike[str] | None
) -> tuple[dict[str, float], np.ndarray]:
    n_features = len(config.features)
    # Sized like the served bytes: a registered champion's assets.extra/ (card, evidence) is not the model.
    if tflite_uri is not None:
        predict = load_tflite_fn(tflite_uri)
        size_bytes = artifact_size_bytes(TFLITE, tflite_uri)
    else:
        predict = load_serving_fn(model_uri, n_features)
        size_bytes = artifact_size_bytes(SAVED_MODEL, model_uri)
    outputs = check_outputs(config, _predict_all(predict, test.features), source=f"model {tflite_uri or model_uri}")
    metrics = task_metrics(config, test.labels, outputs)
    metrics["size_mb"] = size_bytes / BYTES_PER_MB
    metrics["latency_ms"] = measure_latency_ms(predict, test.features[0])
    return metrics, outputs


def _predictions_frame(config: ModelConfig, test: Dataset, outputs: np.ndarray) -> Any:
    import pandas as pd

    frame = pd.DataFrame(test.features.astype("float64"), columns=list(config.features))
    frame.insert(0, "row", test.row_ids)
    frame[config.label] = test.labels
    if config.task == "regression":
        frame["prediction"] = outputs[:, 0]
    else:
        frame["prediction"] = outputs.argmax(axis=1).astype("int64")
        for k in range(outputs.shape[1]):
            frame[f"proba_{k}"] = outputs[:, k]
    return frame


def _format(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _report_rows(
    config: ModelConfig, metrics: Mapping[str, float], champion_metrics: Mapping[str, float]
) -> list[dict[str, Any]]:
    """One row per metric: values, the change against the champion and the gate's bounds."""
    rows = []
    for metric in [*METRICS[config.task], *BUDGET_METRICS]:
        higher = config.higher_is_better(metric)
        bounds = dict(config.gate.thresholds.get(metric, {}))
        if metric in config.gate.budgets:
            bounds["max"] = config.gate.budgets[metric]
        candidate = metrics[metric]
        old = champion_metrics.get(metric)
        change, verdict = None, None
        if old is not None and old != 0 and math.isfinite(old) and math.isfinite(candidate):
            relative = (candidate - old) / abs(old)
            change = f"{relative:+.1%}"
            verdict = "same" if abs(relative) < 0.0005 else ("better" if (relative > 0) == higher else "worse")
        rows.append(
            {
                "metric": metric,
                "higher": higher,
                "key": metric in config.metrics,
                "candidate": candidate,
                "champion": old,
                "change": change,
                "verdict": verdict,
                "bounds": list(bounds.items()),
            }
        )
    return rows


def _report_html(
    config: ModelConfig,
    metrics: Mapping[str, float],
    champion: Mapping[str, Any] | None,
    plot_png: bytes,
    sources: Mapping[str, str | None],
    test_rows: int,
    *,
    measured: Mapping[str, str] | None = None,
    champion_unavailable: str | None = None,
) -> str:
    """report.html, rendered from ``templates/evaluation_report.html``."""
    version = champion.get("version") if champion else None
    return render(
        "evaluation_report.html",
        config=config,
        champion=champion,
        champion_title=f"champion v{version}" if version is not None else "champion",
        rows=_report_rows(config, metrics, champion["metrics"] if champion else {}),
        test_rows=test_rows,
        sources=sources,
        plot_base64=base64.b64encode(plot_png).decode("ascii"),
        format_number=_format,
        measured=measured,
        champion_unavailable=champion_unavailable,
    )


def measured_artifact(model_uri: str | os.PathLike[str], tflite_uri: str | os.PathLike[str] | None) -> dict[str, str]:
    """What a candidate's metrics, size and latency are measured on: its ``.tflite`` file when given, else the SavedModel.

    Register compares this ``sha256`` with the files it is asked to register,
    so the bytes the gate judged are the bytes that get served.
    """
    fmt, path = (TFLITE, tflite_uri) if tflite_uri is not None else (SAVED_MODEL, model_uri)
    return {"format": fmt, "path": str(path), "sha256": artifact_sha256(fmt, path)}


def champion_problem(champion_uri: str | os.PathLike[str], champion_version: int | None) -> str | None:
    """Why the champion cannot be compared against (a registry version that fails its checksums, a missing folder).

    A champion that is a registry version folder, ``<registry>/<name>/<version>``
    (what ``--champion auto`` resolves the stable label to), is verified
    against its checksums.json.  On an object-store artifact root that folder
    is the version's copy in the local mirror
    (:func:`include.mlops.artifact_store.local_version_dir`), laid out the
    same way, so the bytes verified are the bytes evaluated.  Returns None
    when the champion can be used.
    """
    from include.mlops.artifact_store import open_registry
    from include.mlops.registry.protocol import RegistryError

    path = Path(champion_uri)
    if champion_version is None or path.name != str(champion_version):
        return None if path.exists() else f"no model at {path}"
    try:
        open_registry(path.parent.parent).verify(path.parent.name, champion_version)
    except RegistryError as exc:
        return str(exc)
    return None


def _score_champion(
    config: ModelConfig, test: Dataset, champion_uri: str, champion_version: int | None
) -> tuple[dict[str, Any] | None, np.ndarray | None, dict[str, Any] | None]:
    """The champion's record and outputs, or which champion could not be scored and why.

    The evaluation goes on without it (its report says so); the gate then fails
    closed unless the run accepts deciding without a champion.
    """
    problem = champion_problem(champion_uri, champion_version)
    if problem is None:
        # The champion is measured on what it serves: model.tflite when its version has one.
        served = served_artifact(Path(champion_uri))
        try:
            tflite = served.path if served.format == TFLITE else None
            champion_metrics, outputs = _score_model(config, test, champion_uri, tflite)
        except ModelingError as exc:  # e.g. a champion built for other features than today's config
            problem = str(exc)
    if problem is not None:
        log.warning(
            "evaluate %s: champion %s could not be scored: %s; the gate fails closed unless the run accepts "
            "deciding without a champion",
            config.name,
            f"v{champion_version}" if champion_version is not None else champion_uri,
            problem,
        )
        return None, None, {"version": champion_version, "reason": problem, "model_uri": str(champion_uri)}
    champion = {
        "version": champion_version,
        "metrics": champion_metrics,
        "model_uri": str(champion_uri),
        "measured_artifact": {"format": served.format, "path": str(served.path), "sha256": served.sha256},
        # What made the champion, for the gate's "identical to the champion" check (None before fingerprints).
        "fingerprint": version_fingerprint(champion_uri),
    }
    log.info(
        "evaluate %s: champion %s %s",
        config.name,
        f"v{champion_version}" if champion_version is not None else champion_uri,
        {k: round(v, 4) for k, v in champion_metrics.items()},
    )
    return champion, outputs, None


def evaluate(
    config: ModelConfig,
    model_uri: str | os.PathLike[str],
    data_uri: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    champion_uri: str | None = None,
    champion_version: int | None = None,
    tflite_uri: str | None = None,
) -> dict[str, Any]:
    """Score a candidate (and the champion, when given) on the snapshot's ``test`` rows.

    With ``tflite_uri`` the candidate's predictions, size and latency come
    from the ``.tflite`` file through the TFLite interpreter; ``measured_artifact``
    records which file that was, with its sha256.  A champion that is a
    registry version is verified against its checksums first; one that fails
    (or cannot be scored) is left out, with ``champion_unscored``
    (``{"version", "reason", "model_uri"}``) and the line ``champion_unavailable``
    saying which and why: the gate then fails closed unless the run was
    triggered with ``accept_without_champion``.  Writes
    ``<out>/metrics.json``, ``<out>/predictions.parquet`` (test rows with their
    features, label, ``prediction`` and, for classification, ``proba_<k>``),
    ``<out>/plot.png`` and ``<out>/report.html``.
    """
    out = Path(out).resolve()
    test = load_split(config, data_uri, "test")
    log.info("evaluate %s: %d test rows, candidate %s", config.name, len(test), tflite_uri or model_uri)
    measured = measured_artifact(model_uri, tflite_uri)
    metrics, outputs = _score_model(config, test, model_uri, tflite_uri)
    log.info("evaluate %s: candidate %s", config.name, {k: round(v, 4) for k, v in metrics.items()})

    champion: dict[str, Any] | None = None
    champion_outputs = None
    champion_unscored = None
    if champion_uri is not None:
        champion, champion_outputs, champion_unscored = _score_champion(config, test, champion_uri, champion_version)
    champion_unavailable = f"champion unavailable: {champion_unscored['reason']}" if champion_unscored else None

    with step_output(out) as staging:
        evaluation_plot(config, test, outputs, staging / "plot.png", champion_outputs)
        _predictions_frame(config, test, outputs).to_parquet(staging / PREDICTIONS_FILE, index=False)
        sources = {
            "model": str(model_uri),
            "tflite": str(tflite_uri) if tflite_uri else None,
            "champion": str(champion_uri) if champion_uri else None,
            "data": str(data_uri),
        }
        payload = {
            "model": config.name,
            "task": config.task,
            "test_rows": len(test),
            "metrics": metrics,
            "measured_artifact": measured,
            "champion": champion,
            "champion_unavailable": champion_unavailable,
            "champion_unscored": champion_unscored,
            "model_uri": str(model_uri),
            "tflite_uri": str(tflite_uri) if tflite_uri else None,
            "data_uri": str(data_uri),
        }
        atomic_write_json(staging / "metrics.json", to_jsonable(payload))
        report = _report_html(
            config,
            metrics,
            champion,
            (staging / "plot.png").read_bytes(),
            sources,
            len(test),
            measured=measured,
            champion_unavailable=champion_unavailable,
        )
        (staging / "report.html").write_text(report, encoding="utf-8")
    log.info("evaluate %s: report at %s", config.name, out / "report.html")
    return to_jsonable(
        {
            "metrics": metrics,
            "measured_artifact": measured,
            "champion": (
                {"version": champion_version, "metrics": champion["metrics"], "fingerprint": champion["fingerprint"]}
                if champion
                else None
            ),
            "champion_unavailable": champion_unavailable,
            "champion_unscored": champion_unscored,
            "report_uri": str(out / "report.html"),
            "model_uri": str(model_uri),
            "tflite_uri": str(tflite_uri) if tflite_uri else None,
            "test_rows": len(test),
            "metrics_uri": str(out / "metrics.json"),
            "predictions_uri": str(out / PREDICTIONS_FILE),
            "plot_uri": str(out / "plot.png"),
        }
    )
