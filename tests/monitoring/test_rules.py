"""The generated Prometheus rules: up to date with the model configs, valid, and each alert unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from tooling import require_executable

from include.mlops.config import DEFAULT_MODELS_DIR, load_model_configs
from include.mlops.monitoring.rules import RULES_PATH, build_rules, render_rules

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = ROOT / "include" / "monitoring" / "tests"
INSTALL_HINT = "install it with: apt-get install prometheus"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.mlops.monitoring.rules", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_committed_rules_file_is_what_the_configs_generate() -> None:
    check = run_generator("--check")
    assert check.returncode == 0, check.stderr


def test_check_fails_and_says_how_to_fix_when_an_slo_changes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, models)
    config = models / "diabetes.yaml"
    config.write_text(config.read_text().replace("p95_latency_ms: 100", "p95_latency_ms: 40"))

    check = run_generator("--check", "--models-dir", str(models))
    assert check.returncode == 1
    assert "out of date" in check.stderr and "python -m include.mlops.monitoring.rules" in check.stderr

    out = tmp_path / "rules.yml"
    assert run_generator("--models-dir", str(models), "--out", str(out)).returncode == 0
    assert run_generator("--check", "--models-dir", str(models), "--out", str(out)).returncode == 0
    (group,) = [g for g in yaml.safe_load(out.read_text())["groups"] if g["name"] == "mlops-diabetes"]
    (latency,) = [r for r in group["rules"] if r.get("alert") == "MlopsLatencyP95AboveSlo"]
    assert latency["expr"].endswith("> 40")


def test_a_broken_config_is_bad_input(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, models)
    (models / "diabetes.yaml").write_text("name: diabetes\nmonitor: {slo: {max_error_ratio: 2}}\n")
    result = run_generator("--check", "--models-dir", str(models))
    assert result.returncode == 3
    assert "diabetes.yaml" in result.stderr


def test_one_group_per_model_with_each_models_thresholds_and_serving_name() -> None:
    configs = load_model_configs()
    groups = build_rules(configs)["groups"]
    assert [g["name"] for g in groups] == [f"mlops-{c.name}" for c in configs]
    for config, group in zip(configs, groups, strict=True):
        alerts = {r["alert"]: r for r in group["rules"] if "alert" in r}
        assert set(alerts) == {
            "MlopsErrorRatioAboveSlo",
            "MlopsLatencyP95AboveSlo",
            "MlopsNoTraffic",
            "MlopsDriftAboveThreshold",
        }
        slo = config.monitor.slo
        assert alerts["MlopsErrorRatioAboveSlo"]["expr"].endswith(f"> {slo.max_error_ratio:g}")
        assert alerts["MlopsLatencyP95AboveSlo"]["expr"].endswith(f"> {slo.p95_latency_ms:g}")
        for rule in group["rules"]:
            # Every expression of the group selects this model's series only.
            assert f'model_name="{config.serving_name}"' in rule["expr"], rule
    # Stable bytes: the --check comparison does not flap.
    assert render_rules(configs) == render_rules(configs)


def test_promtool_accepts_the_rules() -> None:
    promtool = require_executable("promtool", INSTALL_HINT)
    result = subprocess.run([promtool, "check", "rules", str(RULES_PATH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_executable("promtool", INSTALL_HINT)
    files = sorted(RULE_TESTS.glob("*_test.yml"))
    assert files, f"no promtool rule tests under {RULE_TESTS}"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, files)], cwd=RULE_TESTS, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES_PATH.read_text())["groups"] for r in g["rules"] if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS.glob("*_test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts never shown firing in include/monitoring/tests"
    assert alerts - quiet == set(), "alerts never shown staying quiet in include/monitoring/tests"
