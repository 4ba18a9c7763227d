"""The ``optimize.compress`` block: defaults, and bad values refused at load time with the field named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from include.mlops.config import DEFAULT_MODELS_DIR, ConfigError, find_model_config, load_model_config
from include.mlops.optimize.compress_config import VARIANTS


def _digits_with(tmp_path: Path, compress: object, **optimize: object) -> Path:
    """A copy of the digits config (and its builder) whose optimize block has ``compress`` and ``optimize``."""
    document = yaml.safe_load((DEFAULT_MODELS_DIR / "digits.yaml").read_text())
    document["optimize"] = {**document["optimize"], "compress": compress, **optimize}
    shutil.copy(DEFAULT_MODELS_DIR / "digits.py", tmp_path / "digits.py")
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_demo_configs_try_every_variant_and_serve_tflite_only_when_a_budget_failed(name: str) -> None:
    compress = find_model_config(name).optimize.compress
    assert compress.variants == VARIANTS == ("dynamic", "float16", "int8", "pruned", "qat")
    assert compress.serve == "auto"
    assert compress.max_metric_loss == 0.02
    assert (compress.max_latency_ms, compress.max_size_mb) == (None, None)  # default: the gate's budgets
    assert compress.representative_rows == 100
    assert (compress.pruning.target_sparsity, compress.pruning.epochs, compress.qat.epochs) == (0.5, 4, 3)


def test_a_partial_block_keeps_the_other_defaults(tmp_path: Path) -> None:
    config = load_model_config(_digits_with(tmp_path, {"variants": ["int8"], "serve": "tflite", "max_latency_ms": 2}))
    compress = config.optimize.compress
    assert (compress.variants, compress.serve, compress.max_latency_ms) == (("int8",), "tflite", 2.0)
    assert compress.max_metric_loss == 0.02 and compress.pruning.target_sparsity == 0.5


@pytest.mark.parametrize(
    ("compress", "field", "problem"),
    [
        ({"variants": ["dynamic", "int4"]}, "optimize.compress.variants[1]", "unknown value 'int4'"),
        ({"variants": ["int8", "int8"]}, "optimize.compress.variants", "['int8'] more than once"),
        ({"serve": "always"}, "optimize.compress.serve", "unknown value 'always' (known: auto, tflite, savedmodel)"),
        ({"max_metric_loss": -0.1}, "optimize.compress.max_metric_loss", "must be >= 0"),
        ({"max_latency_ms": 0}, "optimize.compress.max_latency_ms", "must be > 0"),
        ({"representative_rows": 0}, "optimize.compress.representative_rows", "must be > 0"),
        ({"pruning": {"target_sparsity": 1.0}}, "optimize.compress.pruning.target_sparsity", "1"),
        ({"qat": {"epochs": 2, "steps": 3}}, "optimize.compress.qat.steps", "unknown field (allowed: epochs)"),
    ],
)
def test_bad_compress_settings_name_the_field(tmp_path: Path, compress: dict, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_model_config(_digits_with(tmp_path, compress))
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_the_old_quantize_switch_is_refused_and_points_to_compress(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_model_config(_digits_with(tmp_path, {}, quantize="auto"))
    assert caught.value.field == "optimize.quantize"
    assert "compress" in caught.value.problem  # the allowed fields are listed
