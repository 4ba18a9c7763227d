"""Parsing the DAG files must stay cheap: no ML libraries, no work at import time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("airflow.providers.standard.operators.trigger_dagrun", "airflow.api.common.trigger_dag")
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
        # The standard provider's TriggerDagRunOperator module imports the scheduler's models (about 0.3 s): only
        # a monitor DAG whose model asks for rollbacks may load it.
        server_side = set(result["modules"]) & set(SERVER_SIDE)
        assert not server_side, f"{dag_file.name} imports {sorted(server_side)} at parse time"


# The target: a lifecycle DAG costs at most 1.5x a same-shaped EmptyOperator DAG with the same Params.
MAX_RATIO_TO_EMPTY_WITH_PARAMS = 1.5


def test_parse_benchmark_baseline_has_the_lifecycle_shape() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from benchmarks.parse import EDGES, TASK_IDS

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["lifecycle__diabetes"]
    assert sorted(dag.task_ids) == sorted(TASK_IDS)
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    assert edges == set(EDGES)


def test_per_model_parse_work_is_close_to_empty_operators_with_the_same_params(tmp_path: Path) -> None:
    # Work, not time: cProfile's call count is the same on a loaded or an idle machine (the timings are
    # in `make bench`).  It was 1.78x before the Params' schemas were made cheap and shared.
    from benchmarks.parse import calls_per_dag, write_model_configs
    from include.mlops.config import load_model_configs

    configs = load_model_configs(write_model_configs(tmp_path / "models", 20))
    calls = calls_per_dag(configs)
    ratio = calls["lifecycle"] / calls["empty_params"]
    assert ratio <= MAX_RATIO_TO_EMPTY_WITH_PARAMS, f"function calls per DAG {calls} (ratio {ratio:.2f})"
