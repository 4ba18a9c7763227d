"""The optimize step: retrain a candidate that failed the gate, and compress it when a budget failed.

Every combination of ``config.optimize.grid`` is a real training (with the
optimize branch's longer ``epochs``/``patience``); the trial with the lowest
validation loss is exported to ``<out>/model``.  When quantization is due
(``quantize: always``, or ``auto`` with a failed size or latency budget) a
dynamic-range quantized ``<out>/model.tflite`` is written beside it.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from include.mlops.artifacts import atomic_write_json, step_output, to_jsonable
from include.mlops.config import BUDGET_METRICS, ModelConfig
from include.mlops.modeling import convert_to_tflite, export_saved_model, load_split, resolve_hparams, split_validation
from include.mlops.train import TrainingRun, fit_model, history_payload

log = logging.getLogger(__name__)


def optimize_hparams(config: ModelConfig, overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The trials: train config <- optimize epochs/patience <- overrides, then each grid combination."""
    base: dict[str, Any] = {}
    if config.optimize.epochs is not None:
        base["epochs"] = config.optimize.epochs
    if config.optimize.patience is not None:
        base["patience"] = config.optimize.patience
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    keys = list(config.optimize.grid)
    trials = []
    for values in itertools.product(*(config.optimize.grid[k] for k in keys)):
        hparams = resolve_hparams(config, {**base, **dict(zip(keys, values, strict=True))})
        if hparams not in trials:
            trials.append(hparams)
    return trials


def should_quantize(config: ModelConfig, failed: Sequence[str]) -> bool:
    """``always``; or ``auto`` when ``failed`` (the gate's ``failed_budgets``) names ``size_mb`` or ``latency_ms``."""
    mode = config.optimize.compress.serve
    if mode == "tflite":
        return True
    if mode == "savedmodel":
        return False
    return any(name in BUDGET_METRICS for name in failed)


def optimize(
    config: ModelConfig,
    data_uri: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    failed: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Search ``config.optimize.grid``, export the best trial, and quantize it when due.

    ``failed`` lists what the gate failed (metric or budget names); a failed
    ``size_mb`` or ``latency_ms`` budget triggers quantization under
    ``quantize: auto``.  Writes ``<out>/model``, ``<out>/trials.json``,
    ``<out>/tensorboard/trial_<i>/`` and, when quantized, ``<out>/model.tflite``.
    """
    out = Path(out).resolve()
    trials_hparams = optimize_hparams(config, overrides)
    quantize = should_quantize(config, failed)
    data = load_split(config, data_uri, "train")
    fit_data, val_data = split_validation(data, config.train.validation_fraction)
    log.info(
        "optimize %s: %d trial(s) over %s, quantize=%s (mode %s, failed %s)",
        config.name,
        len(trials_hparams),
        dict(config.optimize.grid) or "no grid",
        quantize,
        config.optimize.compress.serve,
        list(failed),
    )
    with step_output(out) as staging:
        best: TrainingRun | None = None
        best_index = -1
        trials: list[dict[str, Any]] = []
        for index, hparams in enumerate(trials_hparams):
            run = fit_model(
                config,
                fit_data,
                val_data,
                hparams,
                tensorboard_dir=staging / "tensorboard" / f"trial_{index}",
                label=f"optimize {config.name} trial {index + 1}/{len(trials_hparams)}",
            )
            summary = {
                "trial": index,
                "hparams": run.hparams,
                "val_loss": run.val_loss,
                "epochs_run": run.epochs_run,
                "best_epoch": run.best_epoch,
                "seconds": round(run.seconds, 2),
            }
            trials.append(summary)
            log.info("optimize %s: trial %d %s -> val_loss %.4g", config.name, index, run.hparams, run.val_loss)
            if best is None or run.val_loss < best.val_loss:
                best, best_index = run, index
            else:
                del run  # only the best model is kept in memory
        assert best is not None  # the grid product always yields at least one trial
        log.info("optimize %s: best trial %d %s (val_loss %.4g)", config.name, best_index, best.hparams, best.val_loss)
        export_saved_model(best.model, staging / "model", len(config.features))
        history = history_payload(config, best, len(fit_data), len(val_data))
        atomic_write_json(staging / "history.json", history)
        tflite_path = convert_to_tflite(staging / "model", staging / "model.tflite") if quantize else None
        best_summary = {**trials[best_index], "replicas": best.replicas}
        atomic_write_json(
            staging / "trials.json",
            to_jsonable({"trials": trials, "best": best_summary, "quantized": quantize, "failed": list(failed)}),
        )
    return to_jsonable(
        {
            "model_uri": str(out / "model"),
            "tflite_uri": str(out / tflite_path.name) if tflite_path is not None else None,
            "trials": trials,
            "best": best_summary,
            "quantized": quantize,
        }
    )
