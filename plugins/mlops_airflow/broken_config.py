"""A stand-in DAG for a model whose config cannot be loaded.

Airflow records an import error per DAG *file*, and a file that raises defines
no DAG at all, so one broken ``include/models/*.yaml`` would hide every
lifecycle DAG.  Instead, the DAG file builds this stand-in under the broken
model's DAG id: the UI lists it with the config error in its docs, and each
run fails at once, without retries, with the same error in its task log.
The model's monitor DAG gets the same stand-in (``monitor__<file stem>``, on
the monitor's hourly default), so a model that keeps serving never goes
unmonitored without a failing run to show it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, task
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.schedules import DEFAULT_START_DATE

log = logging.getLogger(__name__)

BROKEN_CONFIG_TAG = "broken-config"
_NOT_IN_DAG_ID = re.compile(r"[^A-Za-z0-9_.-]")

DOC_TEMPLATE = """\
# Model config `{file}` is broken

This model's {kind} does not run until its config is fixed; the other models' DAGs are unaffected.
Every run of this DAG fails at once with the error below (the task log shows it too).

```
{error}
```

Fix `{path}`; the DAG processor picks the change up on its next parse and this DAG becomes
the model's {kind} again.
"""


# The DAG kinds a model has, and the schedule each keeps while its config is broken: the nightly lifecycle
# and the hourly monitor (MonitorConfig's default) fail (and alert) on time instead of going quiet.
SCHEDULES = {"lifecycle": "@daily", "monitor": "@hourly"}


def broken_config_dag_id(path: Path, kind: str = "lifecycle") -> str:
    """``<kind>__<file stem>``, the id the model's lifecycle (or monitor) DAG would have."""
    return f"{kind}__{_NOT_IN_DAG_ID.sub('_', path.stem)}"


def build_broken_config_dag(path: Path, error: Exception, kind: str = "lifecycle") -> DAG:
    """A ``kind`` DAG named after the model at ``path`` that shows ``error`` and fails every run with it."""
    message = str(error)
    with DAG(
        dag_id=broken_config_dag_id(path, kind),
        description=f"Broken model config {path.name}: {message.splitlines()[0]}"[:500],
        doc_md=DOC_TEMPLATE.format(file=path.name, path=path, error=message, kind=kind),
        schedule=CronDataIntervalTimetable(SCHEDULES[kind], timezone="UTC"),
        start_date=pendulum.datetime(
            DEFAULT_START_DATE.year, DEFAULT_START_DATE.month, DEFAULT_START_DATE.day, tz="UTC"
        ),
        catchup=False,
        max_active_runs=1,
        tags=[kind, BROKEN_CONFIG_TAG],
        default_args={"owner": "mlops", "retries": 0},
    ) as dag:

        @task(task_id="config_error")
        def config_error() -> None:
            log.error("model config %s is invalid:\n%s", path, message)
            # AirflowFailException: a retry cannot fix a config.
            raise AirflowFailException(f"model config {path} is invalid: {message}")

        config_error()
    return dag
