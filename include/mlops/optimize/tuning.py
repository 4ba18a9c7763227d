"""Tuning trials for the optimize branch: plan, one trial, select.

The search is Optuna's (``config.optimize.search``): :func:`plan_trials` asks a
seeded sampler for ``trials`` hyperparameter sets up front, so that every trial
can run as its own task (one mapped Airflow task, one pod with GPUs, each) in
parallel; :func:`run_trial` trains one of them (the optimize branch's longer
``epochs``/``patience``); :func:`select_best` reads every trial's outcome and
picks the lowest validation loss.  The held-out test split is never read here:
evaluate measures the chosen model on it afterwards.

A trial that fails leaves ``<trial out>.failed.json`` (its error) beside its
folder, so that selection can report why; the branch goes on while at least
``min_successful`` trials succeeded.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops.artifacts import atomic_write_json, read_json, step_output, to_jsonable
from include.mlops.config import INTEGER_HPARAMS, ModelConfig, SearchDimension
from include.mlops.training.datasets import load_split, split_validation
from include.mlops.training.errors import ModelingError
from include.mlops.training.modeling import resolve_hparams
from include.mlops.training.savedmodel import export_saved_model
from include.mlops.training.warmup import WARMUP_ROWS, write_warmup_requests

log = logging.getLogger(__name__)


class TuningError(ModelingError):
    """Too few trials succeeded, or the plan and the trials do not match: retrying cannot help."""


def _distribution(hparam: str, dimension: SearchDimension) -> Any:
    """The Optuna distribution of one config dimension (validated when the config loaded)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dimension.type == "categorical":
        assert dimension.choices is not None
        choices = [int(c) if hparam in INTEGER_HPARAMS else float(c) for c in dimension.choices]
        return CategoricalDistribution(choices)
    assert dimension.low is not None and dimension.high is not None
    if dimension.type == "int":
        step = int(dimension.step) if dimension.step is not None else 1
        return IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log, step=step)
    return FloatDistribution(dimension.low, dimension.high, log=dimension.log, step=dimension.step)


def base_hparams(config: ModelConfig, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every trial starts from: train config <- optimize epochs/patience <- the run's overrides."""
    base: dict[str, Any] = {}
    if config.optimize.epochs is not None:
        base["epochs"] = config.optimize.epochs
    if config.optimize.patience is not None:
        base["patience"] = config.optimize.patience
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return resolve_hparams(config, base)


def plan_trials(config: ModelConfig, overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """``search.trials`` hyperparameter sets, asked of Optuna's sampler seeded with ``search.seed``.

    All are asked before any is told, because the trials run in parallel; the
    seeded random sampler is the one that makes sense for such a batch, and
    the same config always gives the same plan.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = config.optimize.search
    distributions = {name: _distribution(name, dim) for name, dim in search.space.items()}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=search.seed))
    base = base_hparams(config, overrides)
    plan = []
    for index in range(search.trials):
        sampled = study.ask(distributions).params
        plan.append({"trial": index, "hparams": resolve_hparams(config, {**base, **sampled})})
    return plan


def tune_plan(
    config: ModelConfig, out: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``<out>/plan.json``; the result lists the trials, one per mapped ``tune_trial`` task."""
    out = Path(out).resolve()
    trials = plan_trials(config, overrides)
    search = config.optimize.search
    with step_output(out) as staging:
        atomic_write_json(
            staging / "plan.json",
            to_jsonable(
                {
                    "model": config.name,
                    "seed": search.seed,
                    "space": {name: dim for name, dim in search.space.items()},
                    "trials": trials,
                    "min_successful": search.min_successful,
                }
            ),
        )
    for trial in trials:
        log.info("tune-plan %s: trial %d %s", config.name, trial["trial"], trial["hparams"])
    return {"plan_uri": str(out / "plan.json"), "trials": trials, "min_successful": search.min_successful}


def failure_file(out: Path) -> Path:
    """Where a failed trial leaves its error: beside its folder (the folder is only written on success)."""
    return out.parent / f"{out.name}.failed.json"


def run_trial(
    config: ModelConfig,
    data_uri: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    trial: int,
    hparams: Mapping[str, Any],
) -> dict[str, Any]:
    """Train trial ``trial`` with ``hparams`` on the snapshot's training rows (fit part), validate on the rest.

    Writes ``<out>/model`` (SavedModel), ``<out>/weights.npz`` (``model.get_weights()``
    in order), ``<out>/history.json`` and ``<out>/trial.json``.  On failure it
    writes :func:`failure_file` and re-raises.
    """
    out = Path(out).resolve()
    failed = failure_file(out)
    failed.unlink(missing_ok=True)
    try:
        return _train_trial(config, data_uri, out, trial, hparams)
    except Exception as exc:
        # A folder from an earlier try of this trial would otherwise read as its success.
        shutil.rmtree(out, ignore_errors=True)
        atomic_write_json(failed, {"trial": trial, "hparams": dict(hparams), "error": f"{type(exc).__name__}: {exc}"})
        raise


def _train_trial(
    config: ModelConfig, data_uri: str | os.PathLike[str], out: Path, trial: int, hparams: Mapping[str, Any]
) -> dict[str, Any]:
    import numpy as np

    from include.mlops.training.train import fit_model, history_payload

    resolved = resolve_hparams(config, hparams)
    data = load_split(config, data_uri, "train")
    fit_data, val_data = split_validation(data, config.train.validation_fraction)
    with step_output(out) as staging:
        run = fit_model(
            config,
            fit_data,
            val_data,
            resolved,
            tensorboard_dir=staging / "tensorboard",
            label=f"tune-trial {config.name} #{trial}",
        )
        export_saved_model(run.model, staging / "model", len(config.features))
        write_warmup_requests(staging / "model", val_data.features[:WARMUP_ROWS])
        np.savez(staging / "weights.npz", *run.model.get_weights())
        atomic_write_json(staging / "history.json", history_payload(config, run, len(fit_data), len(val_data)))
        best = run.best_epoch - 1
        val_metrics = {
            name.removeprefix("val_"): values[best]
            for name, values in run.history.items()
            if name.startswith("val_") and name != "val_loss" and len(values) > best
        }
        result = to_jsonable(
            {
                "trial": trial,
                "hparams": run.hparams,
                "val_loss": run.val_loss,
                "val_metrics": val_metrics,
                "epochs_run": run.epochs_run,
                "best_epoch": run.best_epoch,
                "seconds": round(run.seconds, 2),
                "model_uri": str(out / "model"),
                "weights_uri": str(out / "weights.npz"),
            }
        )
        atomic_write_json(staging / "trial.json", result)
    log.info("tune-trial %s #%d %s -> val_loss %.4g", config.name, trial, run.hparams, run.val_loss)
    return result


def _trial_outcome(planned: Mapping[str, Any], trials_dir: Path) -> dict[str, Any]:
    index = int(planned["trial"])
    folder = trials_dir / str(index)
    outcome: dict[str, Any] = {
        "trial": index,
        "hparams": planned["hparams"],
        "status": "failed",
        "val_loss": None,
        "val_metrics": {},
        "error": None,
        "model_uri": None,
        "weights_uri": None,
    }
    if (folder / "trial.json").is_file():
        result = read_json(folder / "trial.json")
        if math.isfinite(result["val_loss"]):
            return {**outcome, **{k: result[k] for k in outcome if k in result}, "status": "success"}
        outcome["error"] = f"validation loss is not finite ({result['val_loss']})"
    elif failure_file(folder).is_file():
        outcome["error"] = read_json(failure_file(folder)).get("error")
    else:
        outcome["error"] = f"no result in {folder}: the trial did not run to the end (see its task log)"
    return outcome


def select_best(
    config: ModelConfig,
    plan_uri: str | os.PathLike[str],
    trials_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """Read every planned trial's outcome, write ``<out>/trials.json``, and pick the lowest validation loss.

    Raises :class:`TuningError` (after writing ``trials.json``) when fewer than
    ``min_successful`` trials succeeded.
    """
    out = Path(out).resolve()
    plan = read_json(plan_uri)
    min_successful = int(plan["min_successful"])
    trials = [_trial_outcome(planned, Path(trials_dir)) for planned in plan["trials"]]
    succeeded = [t for t in trials if t["status"] == "success"]
    best = min(succeeded, key=lambda t: t["val_loss"]) if succeeded else None
    with step_output(out) as staging:
        atomic_write_json(
            staging / "trials.json",
            to_jsonable({"trials": trials, "best": best["trial"] if best else None, "min_successful": min_successful}),
        )
    for t in trials:
        log.info("tune-select %s: trial %d %s: %s", config.name, t["trial"], t["status"], t["val_loss"] or t["error"])
    if best is None or len(succeeded) < min_successful:
        errors = "; ".join(f"trial {t['trial']}: {t['error']}" for t in trials if t["status"] != "success")
        raise TuningError(
            f"only {len(succeeded)} of {len(trials)} tuning trial(s) succeeded, fewer than "
            f"optimize.search.min_successful={min_successful}, so nothing goes on to evaluation and the "
            f"registry is untouched. Failures: {errors}. The trials are listed in {out / 'trials.json'}"
        )
    log.info(
        "tune-select %s: best trial %d %s (val_loss %.4g)",
        config.name,
        best["trial"],
        best["hparams"],
        best["val_loss"],
    )
    return {
        "model_uri": best["model_uri"],
        "weights_uri": best["weights_uri"],
        "hparams": best["hparams"],
        "trials_uri": str(out / "trials.json"),
        "best": best["trial"],
    }
