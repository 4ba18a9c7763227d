"""Loading the project's plugins stays cheap: the Models view is built only when the API server asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
plugins = {p.name: p for p in plugins_manager._get_plugins()[0]}
loaded = sorted(sys.modules)
apps = plugins["mlops"].fastapi_apps
print(json.dumps({"plugins": sorted(plugins), "before_apps": loaded, "app_prefix": apps[0]["url_prefix"]}))
"""


def test_loading_plugins_imports_neither_the_app_nor_its_plotting() -> None:
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins")}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "mlops" in result["plugins"]
    modules = set(result["before_apps"])
    assert not {"mlops_airflow.models_view.app", "matplotlib", "include.mlops.registry.catalog"} & modules
    # The plugin loader imports every .py file of the plugins folder by its bare name; models_view/ is ignored.
    assert not {"app", "access", "runs"} & modules
    assert result["app_prefix"] == "/mlops"
