"""Pruned and quantization-aware-trained variants, made with TensorFlow Model Optimization.

tfmot 0.8.1 accepts only tf_keras models, and a process picks its Keras when
TensorFlow is first imported.  So :func:`run_tfmot_variants` runs
``python -m include.mlops.optimize.tfmot_variants`` as a child process with
``TF_USE_LEGACY_KERAS=1``: there ``tf.keras`` is tf_keras, and the model's own
builder (written against ``tf.keras``) builds the same network as a tf_keras
model.  The child loads the trained weights (``weights.npz``, saved from the
Keras 3 model), fine-tunes on the snapshot's fit rows, and writes for each kind
``<out>/<kind>/saved_model`` (the serving contract's signature) and
``<out>/<kind>.tflite``:

``pruned``
    low-magnitude pruning of every layer tfmot can prune (``PolynomialDecay``
    from 0 to ``target_sparsity``), stripped of its wrappers, then dynamic-range
    quantized (int8 weights; the zeros stay zeros).
``qat``
    quantization-aware training of every layer tfmot's default 8-bit scheme
    supports (the others, e.g. ``Normalization``, stay float); the converter
    turns the learned fake-quant ranges into int8 kernels and activations.

A kind that fails returns its error instead of raising, so that the caller can
skip that variant with the reason.  This module is the caller's side (any Keras);
the tf_keras work is in :mod:`include.mlops.optimize.tfmot_keras`.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import include
from include.mlops.config import ModelConfig, load_model_config
from include.mlops.optimize.tfmot_keras import KINDS, LEGACY_KERAS_ENV, failed, make_variants

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PRUNING", "DEFAULT_QAT", "KINDS", "run_tfmot_variants"]

DEFAULT_PRUNING: dict[str, Any] = {"target_sparsity": 0.5, "epochs": 4}
DEFAULT_QAT: dict[str, Any] = {"epochs": 3}
# The child's last lines of output, quoted in the error when it dies without a result.
_TAIL_LINES = 20


def _settings(value: Any, defaults: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``value`` (a mapping, a pydantic model or None) over ``defaults``, checked."""
    if value is None:
        given: dict[str, Any] = {}
    elif hasattr(value, "model_dump"):
        given = dict(value.model_dump())
    elif isinstance(value, Mapping):
        given = dict(value)
    else:
        raise TypeError(f"{name} settings must be a mapping or a pydantic model, got {type(value).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown} (known: {sorted(defaults)})")
    merged = {**defaults, **given}
    epochs = merged["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{name}.epochs must be an integer >= 1, got {epochs!r}")
    if "target_sparsity" in merged and not 0.0 < float(merged["target_sparsity"]) < 1.0:
        raise ValueError(f"{name}.target_sparsity must lie strictly between 0 and 1, got {merged['target_sparsity']!r}")
    return merged


def run_tfmot_variants(
    config: ModelConfig,
    hparams: Mapping[str, Any],
    weights_uri: str | os.PathLike[str],
    data_uri: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    kinds: Sequence[str] = KINDS,
    pruning: Any = None,
    qat: Any = None,
    timeout_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Make each of ``kinds`` in a tf_keras child process; one entry per kind.

    Each entry is ``{"tflite": path|None, "saved_model": path|None,
    "sparsity": float|None, "error": str|None}``.  ``pruning`` and ``qat``
    are mappings or pydantic models (``target_sparsity``, ``epochs``; ``epochs``).
    """
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown TFMOT variant kinds {unknown or list(kinds)} (known: {', '.join(KINDS)})")
    pruning_settings = _settings(pruning, DEFAULT_PRUNING, "pruning")
    qat_settings = _settings(qat, DEFAULT_QAT, "qat")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfmot-") as scratch:
        result_file = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-m",
            __name__,
            "--config",
            str(config.path),
            "--hparams",
            json.dumps(dict(hparams)),
            "--weights",
            str(Path(weights_uri).resolve()),
            "--data",
            str(Path(data_uri).resolve()),
            "--out",
            str(out),
            "--kinds",
            ",".join(kinds),
            "--pruning",
            json.dumps(pruning_settings),
            "--qat",
            json.dumps(qat_settings),
            "--result-file",
            str(result_file),
        ]
        returncode, tail = _run_child(command, timeout_s)
        if returncode == 0 and result_file.is_file():
            return json.loads(result_file.read_text())
    shown = "\n".join(tail) or "(no output)"
    error = f"the TFMOT child process ({' '.join(command[:3])}) ended with {returncode} and no result; its last output:\n{shown}"
    log.error("%s", error)
    return {kind: failed(error) for kind in kinds}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env[LEGACY_KERAS_ENV] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The child imports this package from where the caller found it, whatever its working directory.
    root = str(Path(include.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _run_child(command: list[str], timeout_s: float | None) -> tuple[int | str, list[str]]:
    """Run the child, relaying its output to this log; its exit code (or why none) and last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        command, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        try:
            assert child.stdout is not None
            for line in child.stdout:
                line = line.rstrip()
                tail.append(line)
                log.info("tfmot: %s", line)
            return child.wait(timeout=timeout_s), list(tail)
        except subprocess.TimeoutExpired:
            child.kill()
            return f"a timeout after {timeout_s}s", list(tail)


def main(argv: Sequence[str] | None = None) -> int:
    """The child's entry point; run it through :func:`run_tfmot_variants`."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="model config file (YAML)")
    parser.add_argument("--hparams", required=True, type=json.loads, help="training hyperparameters (JSON)")
    parser.add_argument("--weights", required=True, help="weights.npz of the trained model")
    parser.add_argument("--data", required=True, help="snapshot folder or parquet file")
    parser.add_argument("--out", required=True, type=Path, help="folder for <kind>/saved_model and <kind>.tflite")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--pruning", type=json.loads, default={}, help="pruning settings (JSON)")
    parser.add_argument("--qat", type=json.loads, default={}, help="qat settings (JSON)")
    parser.add_argument("--result-file", required=True, type=Path, help="where the JSON result goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = {
        "pruned": _settings(args.pruning, DEFAULT_PRUNING, "pruning"),
        "qat": _settings(args.qat, DEFAULT_QAT, "qat"),
    }
    kinds = [k for k in args.kinds.split(",") if k]
    result = make_variants(
        load_model_config(args.config), args.hparams, args.weights, args.data, args.out, kinds, settings
    )
    args.result_file.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
