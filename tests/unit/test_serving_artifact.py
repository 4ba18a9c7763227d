"""The one rule for which artifact of a registry version is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from include.mlops.config import PROJECT_ROOT
from include.mlops.registry.serving_artifact import ServedArtifact, served_artifact


def test_a_version_with_model_tflite_is_served_from_it(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"pb")
    assert served_artifact(tmp_path) == ServedArtifact("saved_model", tmp_path)
    (tmp_path / "model.tflite").write_bytes(b"TFL3")
    assert served_artifact(tmp_path) == ServedArtifact("tflite", tmp_path / "model.tflite")


def test_importing_the_rule_does_not_import_tensorflow() -> None:
    code = "import sys, include.mlops.registry.serving_artifact; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
