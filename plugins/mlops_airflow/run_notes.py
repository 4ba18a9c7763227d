"""Scheduler listener: a lifecycle run started by a drift detection gets a note that says so.

The Task SDK gives tasks no way to set their run's note, so the scheduler
does it: when a ``lifecycle__<name>`` run starts running and it consumed
retraining Asset events (``retrain__<name>``), its note becomes
"Retraining requested by drift: ...".  A note that someone already wrote is
kept.  Registered with Airflow by :class:`MlopsRunNotesPlugin` (the plugins
folder is scanned for plugin classes).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.monitoring import retrain_note

log = logging.getLogger(__name__)

LIFECYCLE_PREFIX = "lifecycle__"
RETRAIN_ASSET_PREFIX = "retrain__"


def drift_note(dag_run: Any) -> str | None:
    """The note for ``dag_run`` (a scheduler ``DagRun``), or None when no retraining event started it."""
    if not dag_run.dag_id.startswith(LIFECYCLE_PREFIX):
        return None
    events = [e for e in dag_run.consumed_asset_events if e.asset.name.startswith(RETRAIN_ASSET_PREFIX)]
    if not events:
        return None
    event = max(events, key=lambda e: e.timestamp)
    return retrain_note(event.asset.name, event.extra or {}, event.source_run_id)


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    note = drift_note(dag_run)
    if note is None or dag_run.note:
        return
    # The scheduler's session holds dag_run and commits the note with the run's state change.
    dag_run.note = note
    log.info("Run %s of %s: note set: %s", dag_run.run_id, dag_run.dag_id, note)


class MlopsRunNotesPlugin(AirflowPlugin):
    name = "mlops_run_notes"
    listeners = [sys.modules[__name__]]
