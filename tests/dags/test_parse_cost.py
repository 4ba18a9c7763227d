"""Parsing the DAG files must stay cheap: no ML libraries, no work at import time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "pandas", "great_expectations", "sklearn", "matplotlib", "pyarrow")

PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("lifecycle_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dags = sorted(k for k, v in vars(module).items() if type(v).__name__ == "DAG")
print(json.dumps({"dags": dags, "modules": sorted(sys.modules)}))
"""


def test_parsing_dag_files_imports_no_heavy_library() -> None:
    for dag_file in sorted((PROJECT_ROOT / "dags").glob("*.py")):
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, str(dag_file)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["dags"], f"{dag_file.name} defines no DAG"
        loaded = {m.split(".")[0] for m in result["modules"]}
        assert not loaded & set(HEAVY), f"{dag_file.name} imports {sorted(loaded & set(HEAVY))} at parse time"
