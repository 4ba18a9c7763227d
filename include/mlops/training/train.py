"""The train step: fit a model's Keras network on the snapshot and export it for serving.

Training runs under ``tf.distribute.MirroredStrategy`` over the visible GPUs
(one replica on CPU), with fixed seeds, early stopping on a validation set
carved from the training rows, and TensorBoard logs in ``<out>/tensorboard``.
The result is a SavedModel in ``<out>/model`` with the serving contract's
``serving_default`` signature (see :mod:`include.mlops.training.savedmodel`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.artifacts import atomic_write_json, step_output, to_jsonable
from include.mlops.config import ModelConfig
from include.mlops.registry.fingerprint import trained_fingerprint
from include.mlops.training.datasets import Dataset, load_split, split_validation, training_stats
from include.mlops.training.modeling import build_model, resolve_hparams, set_seeds, training_objective
from include.mlops.training.savedmodel import CONTRACT_CHECK_ROWS, check_outputs, export_saved_model
from include.mlops.training.warmup import WARMUP_ROWS, write_warmup_requests

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training ran but produced no usable model (e.g. the loss became NaN)."""


@dataclass
class TrainingRun:
    """One finished fit: the model with its best weights restored, and how it went."""

    model: keras.Model
    hparams: dict[str, Any]
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    val_loss: float
    replicas: int
    seconds: float
    samples_per_second: float
    stats: dict[str, Any] = field(default_factory=dict)


def _progress_callback(label: str, epochs: int) -> keras.callbacks.Callback:
    import keras

    every = max(1, epochs // 10)

    class EpochLog(keras.callbacks.Callback):
        """One log line every ``every`` epochs, instead of Keras' progress bars."""

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            if (epoch + 1) % every == 0 or epoch == 0:
                shown = " ".join(f"{k}={v:.4g}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
                log.info("%s: epoch %d/%d %s", label, epoch + 1, epochs, shown)

    return EpochLog()


def _tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    """Per-epoch scalars for TensorBoard (``tensorboard --logdir <run>/train/tensorboard``)."""
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False, profile_batch=0)


def replica_count() -> int:
    """How many replicas MirroredStrategy would train with here (visible GPUs, or 1 on CPU)."""
    import tensorflow as tf

    return max(1, len(tf.config.list_logical_devices("GPU")))


def fit_model(
    config: ModelConfig,
    fit_data: Dataset,
    val_data: Dataset,
    hparams: Mapping[str, Any],
    *,
    tensorboard_dir: Path | None = None,
    label: str = "train",
) -> TrainingRun:
    """Build, compile and fit ``config``'s model; shared by train and optimize.

    Seeds are reset first, so the same data and hyperparameters give the same model.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    hparams = dict(hparams)
    set_seeds(config.train.seed)
    stats = training_stats(config, fit_data)

    strategy = tf.distribute.MirroredStrategy()
    replicas = int(strategy.num_replicas_in_sync)
    # Each replica keeps the configured batch, so the global batch grows with the GPUs.
    global_batch = int(hparams["batch_size"]) * replicas
    log.info(
        "%s: %d replica(s) (%s), global batch %d, %d fit rows, %d validation rows, hparams %s",
        label,
        replicas,
        ", ".join(d.split("/")[-1] for d in strategy.extended.worker_devices),
        global_batch,
        len(fit_data),
        len(val_data),
        hparams,
    )
    with strategy.scope():
        model = build_model(config, hparams, stats)
        loss, metrics = training_objective(config)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=float(hparams["learning_rate"])), loss=loss, metrics=metrics
        )

    # The output contract is checked before training, so that a wrong head fails in
    # seconds (exit 3) instead of after hours of training.
    check_outputs(
        config,
        model(fit_data.features[:CONTRACT_CHECK_ROWS], training=False),
        source=f"builder {config.builder_path.name}",
    )

    epochs = int(hparams["epochs"])
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(hparams["patience"]), restore_best_weights=True),
        keras.callbacks.TerminateOnNaN(),
        _progress_callback(label, epochs),
    ]
    if tensorboard_dir is not None:
        callbacks.append(_tensorboard_callback(tensorboard_dir))

    started = time.perf_counter()
    history = model.fit(
        fit_data.features,
        fit_data.labels,
        validation_data=(val_data.features, val_data.labels),
        epochs=epochs,
        batch_size=global_batch,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - started
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    val_losses = curves.get("val_loss", [])
    if not any(math.isfinite(v) for v in val_losses):
        raise TrainingError(
            f"{label}: the validation loss is not finite ({val_losses[:3]}...); lower the learning rate "
            f"(now {hparams['learning_rate']}) or check the data for extreme values"
        )
    epochs_run = len(val_losses)
    best_epoch = int(np.argmin([v if math.isfinite(v) else math.inf for v in val_losses]))
    run = TrainingRun(
        model=model,
        hparams=hparams,
        history=curves,
        epochs_run=epochs_run,
        best_epoch=best_epoch + 1,
        val_loss=float(val_losses[best_epoch]),
        replicas=replicas,
        seconds=seconds,
        samples_per_second=len(fit_data) * epochs_run / seconds if seconds > 0 else 0.0,
        stats=stats,
    )
    log.info(
        "%s: stopped after %d epoch(s) in %.1fs (%.0f samples/s); best val_loss %.4g at epoch %d",
        label,
        run.epochs_run,
        run.seconds,
        run.samples_per_second,
        run.val_loss,
        run.best_epoch,
    )
    return run


def history_payload(config: ModelConfig, run: TrainingRun, fit_rows: int, val_rows: int) -> dict[str, Any]:
    return to_jsonable(
        {
            "model": config.name,
            "hparams": run.hparams,
            "seed": config.train.seed,
            "epochs_run": run.epochs_run,
            "best_epoch": run.best_epoch,
            "val_loss": run.val_loss,
            "replicas": run.replicas,
            "seconds": round(run.seconds, 3),
            "samples_per_second": round(run.samples_per_second, 1),
            "train_rows": fit_rows,
            "val_rows": val_rows,
            "history": run.history,
        }
    )


def train(
    config: ModelConfig,
    data_uri: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``config``'s model on the snapshot's ``train`` rows and export it to ``<out>/model``.

    ``overrides`` may set ``epochs``, ``batch_size``, ``learning_rate`` and
    ``patience``.  Writes ``<out>/model`` (SavedModel), ``<out>/history.json``
    and ``<out>/tensorboard/``; a failure leaves ``out`` as it was.  The
    result's ``fingerprint`` identifies what made the model (data, config,
    hyperparameters, seed, code): see :mod:`include.mlops.registry.fingerprint`.
    """
    hparams = resolve_hparams(config, overrides)
    fingerprint = trained_fingerprint(config, data_uri, hparams)
    out = Path(out).resolve()
    data = load_split(config, data_uri, "train")
    fit_data, val_data = split_validation(data, config.train.validation_fraction)
    with step_output(out) as staging:
        run = fit_model(
            config, fit_data, val_data, hparams, tensorboard_dir=staging / "tensorboard", label=f"train {config.name}"
        )
        export_saved_model(run.model, staging / "model", len(config.features))
        write_warmup_requests(staging / "model", val_data.features[:WARMUP_ROWS])
        atomic_write_json(staging / "history.json", history_payload(config, run, len(fit_data), len(val_data)))
    log.info("train %s: SavedModel written to %s", config.name, out / "model")
    return to_jsonable(
        {
            "model_uri": str(out / "model"),
            "epochs_run": run.epochs_run,
            "replicas": run.replicas,
            "hparams": run.hparams,
            "train_rows": len(fit_data),
            "val_rows": len(val_data),
            "val_loss": run.val_loss,
            "samples_per_second": round(run.samples_per_second, 1),
            "fingerprint": fingerprint,
        }
    )
