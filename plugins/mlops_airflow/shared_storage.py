"""Task listener: every Airflow task process writes the artifact root under the shared umask.

The gate, reject and monitoring tasks run in Airflow's own task processes (the
workers, uid 50000) and write into run folders that step pods (uid 1000) made,
and the other way round; they share group 1000 (docs/shared-storage.md).  The
library's writers set modes explicitly, but other files (``alerts.jsonl``,
anything a library writes) follow the umask, and a worker image's default 022
would leave them read-only to the step pods.

The Task SDK calls ``on_task_instance_running`` in the task's own process just
before ``execute``, for every task of every DAG, so this one hook covers all
operators (there is no common base class to put it in).  Registered with
Airflow by :class:`MlopsSharedStoragePlugin` (the plugins folder is scanned
for plugin classes).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from include.mlops.artifacts import SHARED_UMASK, use_shared_umask

log = logging.getLogger(__name__)


@hookimpl
def on_task_instance_running(previous_state: Any, task_instance: Any) -> None:
    previous = use_shared_umask()
    if previous != SHARED_UMASK:
        log.debug("umask %03o -> %03o for the shared artifact root", previous, SHARED_UMASK)


class MlopsSharedStoragePlugin(AirflowPlugin):
    name = "mlops_shared_storage"
    listeners = [sys.modules[__name__]]
