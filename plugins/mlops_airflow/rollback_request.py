"""The monitor's rollback request: on an SLO breach, trigger ``rollback__<name>`` back to the previous stable version.

Only in the monitor DAG of a model whose config sets
``monitor.rollback_on_slo_breach``; ``decide`` branches to it beside
``slo_breach``.  Whether it asks, and for which version, is
:func:`include.mlops.monitoring.rollback_request.decide_rollback` over the
model's audit log of label moves and the requests already made: skipped, with
the reason in its log and ``request_rollback/decision.json``, for a backfill,
a label with no version, a current version that a rollback put there within
the cooldown, a request within the cooldown, or no previous version.  A
request is recorded in ``monitoring/<name>/rollback_requests.json`` first,
then the rollback DAG is triggered with ``{"version", "reason"}`` as a run
named after the monitor run, so a rerun starts no second rollback.

The monitor DAG imports this module only for a model that asks for rollbacks:
the standard provider's ``TriggerDagRunOperator`` module imports Airflow's
server-side models, which would cost every DAG file about 0.3 s to parse.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from include.mlops import artifact_store
from include.mlops.artifacts import atomic_write_json, run_dir
from include.mlops.config import ModelConfig
from include.mlops.monitoring import retraining as retraining_lib
from include.mlops.monitoring import rollback_request as rollback_lib
from mlops_airflow import alerts
from mlops_airflow.gate_operators import BACKFILL_RUN_TYPE, run_type
from mlops_airflow.retraining import monitor_results, monitoring_window

log = logging.getLogger(__name__)


def rollback_run_id(monitor_run_id: str) -> str:
    """The rollback run a monitor run requests: named after it (in Airflow's run id characters), so asked once."""
    return "slo_breach__" + re.sub(r"[^A-Za-z0-9_.~:+-]", "_", monitor_run_id)


def rollback_requests_path(model: str) -> Path:
    return alerts.monitoring_dir(model) / rollback_lib.REQUESTS_FILE


class RollbackRequestOperator(TriggerDagRunOperator):
    """Trigger the model's rollback DAG back to the previous stable version, at most once per breach episode."""

    ui_color = "#f5d6f0"

    def __init__(self, *, config: ModelConfig, **kwargs: Any) -> None:
        super().__init__(trigger_dag_id=config.rollback_dag_id, skip_when_already_exists=True, **kwargs)
        self.config = config

    def execute(self, context: Context) -> None:
        # The model's requests: pulled first, published again after (also after a skip).
        with artifact_store.synced(alerts.monitoring_dir(self.config.name)):
            self._request(context)
        super().execute(context)  # raises the trigger for the task runner

    def _request(self, context: Context) -> None:
        slo, _, decided = monitor_results(context)
        run_id = context["dag_run"].run_id
        _, at = monitoring_window(context, self.config.monitor.window)
        registry = artifact_store.open_registry()
        path = rollback_requests_path(self.config.name)
        decision = rollback_lib.decide_rollback(
            current=registry.label_version(self.config.serving_name, "stable"),
            moves=registry.read_label_moves(self.config.serving_name),
            requests=retraining_lib.read_requests(path),
            run_id=run_id,
            at=at,
            backfill=run_type(context["dag_run"]) == BACKFILL_RUN_TYPE,
            period=self.config.monitor.cooldown,
        )
        out = run_dir(self.dag_id, run_id, self.task_id)
        atomic_write_json(out / "decision.json", decision.to_dict())
        artifact_store.publish(out)
        if decision.action == rollback_lib.HOLD:
            log.warning("No rollback of %s requested: %s", self.config.name, decision.reason)
            raise AirflowSkipException(f"No rollback requested: {decision.reason}")
        reason = decision.earlier_reason or rollback_lib.rollback_reason(run_id, slo)
        entry = {
            "kind": rollback_lib.ROLLBACK_KIND,
            "requested_at": at.isoformat(),
            "monitor_dag_id": self.dag_id,
            "monitor_run_id": run_id,
            "current": decision.current,
            "version": decision.version,
            "reason": reason,
            "breaches": list(slo.get("breaches") or []),
            "report_uri": decided.get("report_uri"),
        }
        # Recorded before the trigger: the next runs find it (the cooldown) even if triggering fails.
        retraining_lib.append_request(path, entry)
        self.conf = {"version": decision.version, "reason": reason}
        self.trigger_run_id = rollback_run_id(run_id)
        self.note = f"Rollback requested by {self.dag_id} run {run_id}: {reason}"
        log.warning(
            "Rollback of %s requested (%s): %s run %s with %s",
            self.config.name, decision.reason, self.trigger_dag_id, self.trigger_run_id, self.conf,
        )  # fmt: skip
