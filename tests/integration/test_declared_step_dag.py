"""A step declared outside the library runs as a task of a DAG built by the step operator factory.

The ``touch`` step of ``tests/declared_steps.py`` has one declaration and
nothing else: no CLI branch, no timeout entry, no operator code.  A DAG file
that asks :func:`mlops_airflow.backends.step_operator` for it runs with
``dag.test()``: the local backend starts ``python -m include.mlops touch``,
which finds the declaration through ``$MLOPS_STEP_MODULES``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from include.mlops.artifacts import run_dir
from include.mlops.steps import STEP_MODULES_ENV, Step, register_step, unregister_step

pytestmark = pytest.mark.usefixtures("airflow_db")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
DAG_ID = "declared_step"

DAG_FILE = """
import datetime as dt

from airflow.sdk import DAG

from include.mlops.config import load_model_config
from mlops_airflow.backends import step_operator

CONFIG = load_model_config({config!r})

with DAG(dag_id={dag_id!r}, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)):
    step_operator(task_id="touch", step="touch", model=CONFIG.name, config=CONFIG, arguments={{"text": "from a DAG"}})
"""


@pytest.fixture
def touch_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[Step]:
    """The ``touch`` step, declared here and in the step subprocesses started by this test.

    Imported here, not at the top: importing the module declares the step, and
    the other tests see the lifecycle's steps only.
    """
    import declared_steps

    monkeypatch.setenv(STEP_MODULES_ENV, declared_steps.MODULE)
    tests_dir = str(PROJECT_ROOT / "tests")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    yield register_step(declared_steps.TOUCH)
    unregister_step(declared_steps.TOUCH.name)


def test_a_declared_step_runs_in_a_dag_from_the_step_operator_factory(
    touch_step: Step, artifact_root: Path, tmp_path: Path
) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    folder = tmp_path / "dags"
    folder.mkdir()
    config = PROJECT_ROOT / "include" / "models" / "diabetes.yaml"
    (folder / f"{DAG_ID}.py").write_text(DAG_FILE.format(config=str(config), dag_id=DAG_ID))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    task = bag.dags[DAG_ID].get_task("touch")
    assert task.execution_timeout == dt.timedelta(seconds=touch_step.timeout_s)
    # dag.test() runs only serialized DAGs of a known bundle.
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)

    dag_run = bag.dags[DAG_ID].test(logical_date=DAY)

    with create_session() as session:
        [ti] = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=dag_run.run_id).all()
        assert (ti.task_id, str(ti.state)) == ("touch", "success")
        [row] = session.query(XComModel).filter_by(dag_id=DAG_ID, run_id=dag_run.run_id, key="return_value")
        result = XComModel.deserialize_value(row)
    touched = run_dir(DAG_ID, dag_run.run_id, "touch", root=artifact_root) / "touched.txt"
    assert result == {"touched_uri": str(touched), "model": "diabetes", "characters": len("from a DAG")}
    assert touched.read_text() == "from a DAG"
