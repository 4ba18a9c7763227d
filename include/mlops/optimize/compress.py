"""The compress step: TFLite variants of the tuned model, measured against it, kept only within budget.

From the chosen SavedModel, TensorFlow's converter makes a ``dynamic``-range,
a ``float16`` and a full-``int8`` variant (calibrated on the snapshot's
training rows); TF Model Optimization's ``pruned`` and ``qat`` variants come
from :mod:`include.mlops.optimize.tfmot_variants` (a tf_keras child process).  Each
variant is measured in the same run as the float model: the config's primary
gate metric on the validation rows, the size on disk, and the single-row and
batch-32 CPU latency.  A variant is kept only when its metric is at most
``max_metric_loss`` worse and it is within ``max_latency_ms`` and
``max_size_mb`` (default: the gate's budgets).  When a kept variant is due to
be served (``serve``), the best one is copied to ``<out>/model.tflite``, which
register stores beside the SavedModel and the server prefers.

Writes ``<out>/variants/<name>.tflite``, ``<out>/variants.json``,
``<out>/report.html`` (see :mod:`include.mlops.optimize.report`),
``<out>/model`` and, when a variant is served, ``<out>/model.tflite``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.artifacts import atomic_write_json, dir_size_bytes, read_json, step_output, to_jsonable
from include.mlops.config import BUDGET_METRICS, ModelConfig
from include.mlops.optimize.compress_config import CONVERTER_VARIANTS, TFMOT_VARIANTS
from include.mlops.optimize.tflite_variants import FLOAT32_TFLITE, calibration_rows, convert_variant, measure
from include.mlops.training.datasets import load_split, split_validation
from include.mlops.training.errors import ModelingError
from include.mlops.training.savedmodel import OutputContractError, load_serving_fn, load_tflite_fn

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

VARIANTS_DIR = "variants"
FLOAT = "float"  # the served_variant when no compressed variant is served


class CompressError(ModelingError):
    """The compress step's inputs do not fit (a missing candidate, trials file or weights)."""


@dataclass(frozen=True)
class Budgets:
    """What a kept variant must meet: relative metric loss, and each size/latency bound that is set."""

    max_metric_loss: float
    max_latency_ms: float | None
    max_size_mb: float | None


# The pruned and qat variants fine-tune the chosen trial's weights: without them they are skipped, saying so.
NEEDS_TRIAL_WEIGHTS = "skipped: needs the chosen trial's weights.npz and hyperparameters (--weights, --hparams)"


def budgets(config: ModelConfig) -> Budgets:
    """The compress block's budgets, with unset size/latency bounds taken from ``gate.budgets``."""
    compress = config.optimize.compress
    return Budgets(
        max_metric_loss=compress.max_metric_loss,
        max_latency_ms=compress.max_latency_ms or config.gate.budgets.get("latency_ms"),
        max_size_mb=compress.max_size_mb or config.gate.budgets.get("size_mb"),
    )


def primary_metric(config: ModelConfig) -> str:
    """The metric a variant's loss is judged on: the first of ``metrics`` the gate thresholds, else the first."""
    return next((m for m in config.metrics if m in config.gate.thresholds), config.metrics[0])


def metric_loss(config: ModelConfig, metric: str, reference: float, value: float) -> float:
    """Relative worsening of ``value`` against ``reference`` (positive = worse), as ``gate.max_regression`` reads it."""
    worse = (reference - value) if config.higher_is_better(metric) else (value - reference)
    return worse / abs(reference) if reference else worse


def judge(
    config: ModelConfig, limits: Budgets, measured: Mapping[str, Any], reference: Mapping[str, Any]
) -> dict[str, Any]:
    """A variant's figures against the float references, and whether it is kept (with the reason)."""
    metric = primary_metric(config)
    value, base = measured["metrics"][metric], reference[FLOAT]["metrics"][metric]
    loss = metric_loss(config, metric, base, value)
    figures = {
        **measured,
        "metric": metric,
        "metric_value": value,
        "metric_delta": value - base,
        "metric_loss": loss,
        "size_ratio": measured["size_bytes"] / reference[FLOAT32_TFLITE]["size_bytes"],
        "speedup_1": reference[FLOAT]["latency_1_ms"] / measured["latency_1_ms"],
        "speedup_32": reference[FLOAT]["latency_32_ms"] / measured["latency_32_ms"],
    }
    problems = []
    if loss > limits.max_metric_loss:
        problems.append(
            f"{metric} {value:.4g} vs float {base:.4g}: {loss:.1%} worse, more than max_metric_loss "
            f"{limits.max_metric_loss:.1%}"
        )
    for name, bound in (("latency_ms", limits.max_latency_ms), ("size_mb", limits.max_size_mb)):
        got = measured["latency_1_ms" if name == "latency_ms" else "size_mb"]
        if bound is not None and got > bound:
            problems.append(f"{name} {got:.4g} over the budget {bound:g}")
    reason = "; ".join(problems) if problems else f"{metric} within {limits.max_metric_loss:.1%} and within budget"
    return {**figures, "kept": not problems, "status": "rejected" if problems else "kept", "reason": reason}


def choose_served(variants: Mapping[str, Mapping[str, Any]], failed: Sequence[str]) -> str | None:
    """The kept variant to serve: best on the failed budgets (latency first), then on metric loss."""
    order = [m for m in BUDGET_METRICS if m in failed] or ["latency_ms", "size_mb"]
    field = {"latency_ms": "latency_1_ms", "size_mb": "size_bytes"}
    kept = [name for name, v in variants.items() if v.get("kept")]
    return min(kept, key=lambda n: (*(variants[n][field[m]] for m in order), variants[n]["metric_loss"]), default=None)


_FIGURES = (
    "metrics", "size_bytes", "size_mb", "latency_1_ms", "latency_32_ms", "metric", "metric_value",
    "metric_delta", "metric_loss", "size_ratio", "speedup_1", "speedup_32", "sparsity",
)  # fmt: skip


def _skipped(reason: str, status: str = "skipped") -> dict[str, Any]:
    """A variant that was not measured: every figure is null, the reason says why."""
    return {**dict.fromkeys(_FIGURES), "kept": False, "status": status, "reason": reason, "tflite": None}


def _tfmot_variants(
    config: ModelConfig,
    kinds: Sequence[str],
    hparams: Mapping[str, Any] | None,
    weights_uri: str | os.PathLike[str] | None,
    data_uri: str | os.PathLike[str],
    work_dir: Path,
) -> dict[str, dict[str, Any]]:
    """TF Model Optimization's results per kind (``tflite``, ``saved_model``, ``sparsity``, ``error``)."""
    from include.mlops.optimize.tfmot_variants import run_tfmot_variants

    if weights_uri is None or hparams is None:
        return {kind: {"error": NEEDS_TRIAL_WEIGHTS} for kind in kinds}
    compress = config.optimize.compress
    return run_tfmot_variants(
        config,
        dict(hparams),
        weights_uri,
        data_uri,
        work_dir,
        kinds=tuple(kinds),
        pruning=dataclasses.asdict(compress.pruning),
        qat=dataclasses.asdict(compress.qat),
    )


def _served_reason(serve: str, failed: Sequence[str], chosen: str | None) -> str:
    budget_failed = [m for m in failed if m in BUDGET_METRICS]
    if serve == "savedmodel":
        return "serve: savedmodel - the float SavedModel is served; the variants are for information"
    if serve == "auto" and not budget_failed:
        return "serve: auto and no size or latency budget failed - the float SavedModel is served"
    why = f"serve: {serve}" + (f", the gate failed {', '.join(budget_failed)}" if budget_failed else "")
    if chosen is None:
        return f"{why}, but no variant was kept - the float SavedModel is served"
    return f"{why} - the kept variant {chosen!r} is served as model.tflite"


# --------------------------------------------------------------------------- the step


def compress(
    config: ModelConfig,
    data_uri: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights_uri: str | os.PathLike[str] | None = None,
    hparams: Mapping[str, Any] | None = None,
    trials_uri: str | os.PathLike[str] | None = None,
    failed: Sequence[str] = (),
    calibration: np.ndarray | None = None,
    latency_rounds: int = 1,
) -> dict[str, Any]:
    """Make, measure and judge the config's variants of ``candidate``; copy the model to serve to ``out``.

    ``failed``: what the gate failed (a failed ``size_mb``/``latency_ms`` makes
    ``serve: auto`` serve the best kept variant).  ``trials_uri``: tune_select's
    trials.json, shown in the report.  ``calibration``: int8 calibration rows
    instead of the sample of training rows.  ``latency_rounds``: each latency
    is the median of this many medians (the benchmark repeats; the step does not).
    """
    from include.mlops.optimize.report import write_report

    out = Path(out).resolve()
    compress_config = config.optimize.compress
    limits = budgets(config)
    candidate = Path(candidate)
    if trials_uri is not None and not Path(trials_uri).is_file():
        raise CompressError(f"no trials file at {trials_uri}: pass tune_select's trials.json (--trials) or omit it")
    trials = read_json(trials_uri) if trials_uri is not None else None
    n_features = len(config.features)
    float_predict = load_serving_fn(candidate, n_features)
    fit, val = split_validation(load_split(config, data_uri, "train"), config.train.validation_fraction)
    if calibration is None:
        calibration, calibration_problem = calibration_rows(config, fit)
    else:
        calibration_problem = None
    log.info(
        "compress %s: variants %s of %s; %d validation rows; budgets %s; failed %s",
        config.name,
        list(compress_config.variants),
        candidate,
        len(val),
        limits,
        list(failed),
    )
    with step_output(out) as staging:
        variants_dir = staging / VARIANTS_DIR
        variants_dir.mkdir()
        reference = {
            FLOAT: {
                **measure(config, float_predict, val, dir_size_bytes(candidate), latency_rounds),
                "path": str(candidate),
            }
        }
        float32 = convert_variant(candidate, FLOAT32_TFLITE, variants_dir / f"{FLOAT32_TFLITE}.tflite")
        reference[FLOAT32_TFLITE] = {
            **measure(config, load_tflite_fn(float32), val, float32.stat().st_size, latency_rounds),
            "path": str(out / VARIANTS_DIR / float32.name),
        }

        sources: dict[str, dict[str, Any]] = {}  # variant -> {"tflite": Path, "saved_model": Path|None, ...}
        for kind in (k for k in compress_config.variants if k in CONVERTER_VARIANTS):
            if kind == "int8" and calibration_problem is not None:
                sources[kind] = {"error": calibration_problem}
                continue
            try:
                path = convert_variant(candidate, kind, variants_dir / f"{kind}.tflite", calibration)
                sources[kind] = {"tflite": path, "saved_model": None}
            except Exception as exc:  # a converter failure skips this variant only
                log.exception("compress %s: the %s conversion failed", config.name, kind)
                sources[kind] = {"error": f"failed: the TFLite converter refused it ({exc})"}
        tfmot_kinds = [k for k in compress_config.variants if k in TFMOT_VARIANTS]
        if tfmot_kinds:
            for kind, made in _tfmot_variants(
                config, tfmot_kinds, hparams, weights_uri, data_uri, staging / "tfmot"
            ).items():
                if made.get("error") or not made.get("tflite"):
                    sources[kind] = {"error": made.get("error") or "failed: TF Model Optimization wrote no .tflite"}
                    continue
                path = Path(shutil.copyfile(made["tflite"], variants_dir / f"{kind}.tflite"))
                sources[kind] = {
                    "tflite": path,
                    "saved_model": made.get("saved_model"),
                    "sparsity": made.get("sparsity"),
                }

        variants: dict[str, dict[str, Any]] = {}
        for kind in compress_config.variants:
            source = sources[kind]
            if "error" in source:
                error = str(source["error"])
                variants[kind] = _skipped(error if error.startswith(("skipped", "failed")) else f"failed: {error}")
                continue
            try:
                measured = measure(
                    config, load_tflite_fn(source["tflite"]), val, source["tflite"].stat().st_size, latency_rounds
                )
            except OutputContractError as exc:
                variants[kind] = _skipped(f"rejected: its outputs break the serving contract ({exc})", "rejected")
                continue
            variants[kind] = {
                **judge(config, limits, measured, reference),
                "tflite": str(out / VARIANTS_DIR / source["tflite"].name),
                "sparsity": source.get("sparsity"),
            }
            log.info("compress %s: %s %s - %s", config.name, kind, variants[kind]["status"], variants[kind]["reason"])

        due = compress_config.serve == "tflite" or (
            compress_config.serve == "auto" and any(m in BUDGET_METRICS for m in failed)
        )
        chosen = choose_served(variants, failed) if due else None
        served_reason = _served_reason(compress_config.serve, failed, chosen)
        log.info("compress %s: %s", config.name, served_reason)
        model_source = _model_source(candidate, sources.get(chosen, {}).get("saved_model"), n_features)
        shutil.copytree(model_source, staging / "model")
        tflite_uri = None
        if chosen is not None:
            shutil.copyfile(sources[chosen]["tflite"], staging / "model.tflite")
            tflite_uri = str(out / "model.tflite")
        summary = {
            "model": config.name,
            "candidate": str(candidate),
            "primary_metric": primary_metric(config),
            "budgets": vars(limits),
            "serve": compress_config.serve,
            "failed": list(failed),
            "served_variant": chosen or FLOAT,
            "served_reason": served_reason,
            "validation_rows": len(val),
            "reference": reference,
            "variants": variants,
        }
        atomic_write_json(staging / "variants.json", to_jsonable(summary))
        write_report(config, summary, trials, staging / "report.html")
    return to_jsonable(
        {
            "model_uri": str(out / "model"),
            "tflite_uri": tflite_uri,
            "served_variant": chosen or FLOAT,
            "served_reason": served_reason,
            "report_uri": str(out / "report.html"),
            "variants_uri": str(out / "variants.json"),
            "variants": {
                name: {
                    k: v.get(k)
                    for k in ("kept", "status", "reason", "size_ratio", "speedup_1", "speedup_32", "metric_delta")
                }
                for name, v in variants.items()
            },
        }
    )


def _model_source(candidate: Path, variant_saved_model: str | os.PathLike[str] | None, n_features: int) -> Path:
    """The SavedModel to put beside the served .tflite: the variant's own when it keeps the contract, else the candidate."""
    if variant_saved_model is None:
        return candidate
    try:
        load_serving_fn(variant_saved_model, n_features)
    except ModelingError as exc:
        log.warning(
            "compress: the variant's SavedModel %s breaks the contract (%s); keeping the candidate's",
            variant_saved_model,
            exc,
        )
        return candidate
    return Path(variant_saved_model)
