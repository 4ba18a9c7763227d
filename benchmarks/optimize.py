"""Benchmark of the compressed variants of the digits model against the float model, in one run.

The digits model is trained on the whole bundled dataset as one tuning trial
(its config's hyperparameters, capped at ``EPOCHS``), then the compress step makes and
measures every variant.  Latencies are medians over ``ROUNDS`` rounds of 50
timed calls each (after warm-up), on CPU, the float SavedModel measured in
the same rounds.

Reported under ``variants.<name>``: ``size_ratio`` against the float32
TFLite conversion of the same model, ``speedup_1`` / ``speedup_32`` against
the float SavedModel's ``serving_default`` (single row, batch of 32),
``metric_delta`` (accuracy minus the float model's, validation rows), and
whether the variant is kept.  ``tflite_float32`` shows how much of each
speedup is the TFLite interpreter itself rather than the compression.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]

log = logging.getLogger(__name__)

EPOCHS = 20
ROUNDS = 7


def run(results_dir: Path) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from unit.ml_fixtures import make_snapshot

    from include.mlops.config import find_model_config
    from include.mlops.optimize.compress import compress
    from include.mlops.optimize.tuning import run_trial

    config = find_model_config("digits")
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        base = Path(tmp)
        snapshot = make_snapshot(config, base / "snapshot")
        # Trained as one tuning trial, so the pruned and qat variants get its weights.npz, as in the DAG.
        trial = run_trial(config, snapshot, base / "tune_trial", trial=0, hparams={"epochs": EPOCHS})
        compress(
            config,
            snapshot,
            trial["model_uri"],
            base / "compress",
            weights_uri=trial["weights_uri"],
            hparams=trial["hparams"],
            latency_rounds=ROUNDS,
        )
        summary = json.loads((base / "compress" / "variants.json").read_text())
    reference = summary["reference"]
    float_model, float32 = reference["float"], reference["float32"]

    def figures(entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "size_bytes": entry["size_bytes"],
            "size_ratio": round(entry["size_bytes"] / float32["size_bytes"], 4),
            "latency_1_ms": round(entry["latency_1_ms"], 4),
            "latency_32_ms": round(entry["latency_32_ms"], 4),
            "speedup_1": round(float_model["latency_1_ms"] / entry["latency_1_ms"], 2),
            "speedup_32": round(float_model["latency_32_ms"] / entry["latency_32_ms"], 2),
        }

    variants = {}
    for name, variant in summary["variants"].items():
        if variant["size_bytes"] is None:
            variants[name] = {"kept": False, "reason": variant["reason"]}
            continue
        variants[name] = {
            **figures(variant),
            "metric_delta": round(variant["metric_delta"], 4),
            "kept": variant["kept"],
            "reason": variant["reason"],
        }
        if variant.get("sparsity") is not None:
            variants[name]["sparsity"] = round(variant["sparsity"], 4)
    result = {
        "benchmark": "optimize",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "processor": platform.machine()},
        "model": "digits",
        "epochs": EPOCHS,
        "rounds": ROUNDS,
        "metric": summary["primary_metric"],
        "validation_rows": summary["validation_rows"],
        "float_savedmodel": {
            "size_bytes": float_model["size_bytes"],
            "latency_1_ms": round(float_model["latency_1_ms"], 4),
            "latency_32_ms": round(float_model["latency_32_ms"], 4),
            "metric": round(float_model["metrics"][summary["primary_metric"]], 4),
        },
        "tflite_float32": figures(float32),
        "variants": variants,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "optimize.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(PROJECT_ROOT / "benchmarks" / "results"), indent=2))
