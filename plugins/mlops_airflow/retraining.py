"""The monitor's retraining request and what a lifecycle run learns from it.

``request_retrain`` applies :func:`include.mlops.monitoring.retraining.decide_retrain`
to the window that ``decide`` recorded: it emits the model's retraining Asset
(:func:`retrain_asset`, which also schedules the lifecycle DAG), raises a
``drift_persists`` alert, or is skipped, and in each case logs the reason and
writes it to ``request_retrain/decision.json`` in the run folder.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, BaseOperator, Context
from airflow.sdk.exceptions import AirflowSkipException

from include.mlops import artifact_store
from include.mlops.artifacts import atomic_write_json, run_dir
from include.mlops.config import ModelConfig
from include.mlops.monitoring import retraining as retraining_lib
from mlops_airflow import alerts
from mlops_airflow.gate_operators import BACKFILL_RUN_TYPE, run_type

log = logging.getLogger(__name__)

RETRAIN_REQUESTS_FILE = retraining_lib.REQUESTS_FILE


def retrain_asset(config: ModelConfig) -> Asset:
    """The Asset a drift detection emits to request a retraining run of ``config``'s model.

    One definition for the monitor DAG's outlet and the lifecycle DAG's schedule.
    """
    return Asset(name=f"retrain__{config.name}", uri=f"mlops://retrain/{config.name}", group="mlops")


def retrain_requests_path(model: str) -> Path:
    return alerts.monitoring_dir(model) / RETRAIN_REQUESTS_FILE


def monitoring_window(context: Context, window: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    """The window a monitor run measures: ``window`` ending when the run was due (``run_after``).

    For a scheduled run that is its data interval's end.  A run triggered by
    hand measures up to the moment it was triggered, not the last whole
    interval before it (Airflow's inferred data interval for a manual run),
    so that "trigger now" sees the traffic of the last minutes.
    """
    end = context["dag_run"].run_after
    end = pendulum.instance(end).in_timezone("UTC")
    return end - window, end


def monitor_results(context: Context) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The ``slo`` and ``drift`` results and the ``decide`` record of this run (empty when missing)."""
    ti = context["ti"]
    return (
        ti.xcom_pull(task_ids="slo") or {},
        ti.xcom_pull(task_ids="drift") or {},
        ti.xcom_pull(task_ids="decide", key="outcome") or {},
    )


def record_window(config: ModelConfig, context: Context, drift: Mapping[str, Any] | None) -> dict[str, Any]:
    """Record this run's drift verdict in the model's window history (``decide`` calls it)."""
    _, end = monitoring_window(context, config.monitor.window)
    record = retraining_lib.window_record(drift, run_id=context["dag_run"].run_id, window_end=end)
    with artifact_store.synced(alerts.monitoring_dir(config.name)) as folder:
        retraining_lib.record_window(folder, record)
    return record


class RetrainRequestOperator(BaseOperator):
    """Emit the model's retraining Asset event when drift persists, at most once per cooldown.

    Skipped (no event) with the reason in its log and ``decision.json``: a
    backfill, a rerun of a run that already requested, drift in too few of the
    last windows, the cooldown (and when it ends), or ``drift_persists`` after
    ``monitor.max_retrains`` requests (that one also alerts through the
    model's alert Connection).
    """

    ui_color = "#d6f5e3"

    def __init__(self, *, config: ModelConfig, **kwargs: Any) -> None:
        super().__init__(outlets=[retrain_asset(config)], **kwargs)
        self.config = config

    def execute(self, context: Context) -> dict[str, Any]:
        # The model's window verdicts and requests: pulled first, published again after (also after a skip).
        with artifact_store.synced(alerts.monitoring_dir(self.config.name)):
            return self._request(context)

    def _request(self, context: Context) -> dict[str, Any]:
        _, drift, decided = monitor_results(context)
        monitor, run_id = self.config.monitor, context["dag_run"].run_id
        folder = alerts.monitoring_dir(self.config.name)
        _, at = monitoring_window(context, monitor.window)
        window = retraining_lib.window_record(drift, run_id=run_id, window_end=at)
        persistence = monitor.drift.persistence
        path = retrain_requests_path(self.config.name)
        decision = retraining_lib.decide_retrain(
            window=window,
            history=retraining_lib.read_windows(folder, until=at, n=persistence.n),
            requests=retraining_lib.read_requests(path),
            run_id=run_id,
            backfill=run_type(context["dag_run"]) == BACKFILL_RUN_TYPE,
            k=persistence.k,
            n=persistence.n,
            period=monitor.cooldown,
            max_retrains=monitor.max_retrains,
        )
        entry = {
            "requested_at": at.isoformat(),
            "monitor_dag_id": self.dag_id,
            "monitor_run_id": run_id,
            "version": window["version"],
            "score": drift.get("score"),
            "threshold": drift.get("threshold"),
            "drifted_features": window["drifted_features"],
            "report_uri": decided.get("report_uri"),
        }
        out = run_dir(self.dag_id, run_id, self.task_id)
        atomic_write_json(out / "decision.json", {"window": window, **decision.to_dict()})
        artifact_store.publish(out)
        if decision.action == retraining_lib.HOLD:
            log.warning("No retraining requested for %s: %s", self.config.name, decision.reason)
            raise AirflowSkipException(f"No retraining requested: {decision.reason}")
        if decision.action == retraining_lib.DRIFT_PERSISTS:
            # Recorded first, so the alert is raised once per cooldown like a request.
            retraining_lib.append_request(path, {**entry, "kind": retraining_lib.PERSISTS_KIND})
            features = ", ".join(window["drifted_features"]) or "none listed"
            alerts.alert(
                model=self.config.name,
                kind=retraining_lib.PERSISTS_KIND,
                subject=f"[mlops] drift persists for model {self.config.name} after retraining: {features}",
                details={"dag_id": self.dag_id, "run_id": run_id, **entry, **decision.to_dict()},
                conn_id=monitor.alert_conn_id,
                context=context,
            )
            raise AirflowSkipException(f"No retraining requested: {decision.reason}")
        # Recorded before the event: a rerun of this run finds it and does not emit again.
        retraining_lib.append_request(path, {**entry, "kind": retraining_lib.RETRAIN_KIND})
        context["outlet_events"][retrain_asset(self.config)].extra = entry
        log.warning("Retraining of %s requested (%s): %s", self.config.name, decision.reason, entry)
        return entry


def drift_trigger(context: Context) -> dict[str, Any] | None:
    """What requested this lifecycle run, from its triggering retraining Asset events (None: not asset-triggered)."""
    events = context.get("triggering_asset_events") or {}
    found: list[Any] = [event for asset_events in events.values() for event in asset_events]
    if not found:
        return None
    event = max(found, key=lambda e: e.timestamp)
    extra = dict(event.extra or {})
    return {
        "asset": event.asset.name,
        "monitor_dag_id": event.source_dag_id or extra.get("monitor_dag_id"),
        "monitor_run_id": event.source_run_id or extra.get("monitor_run_id"),
        "drift_score": extra.get("score"),
        "drifted_features": extra.get("drifted_features"),
        "drifted_version": extra.get("version"),
        "report_uri": extra.get("report_uri"),
        "event_timestamp": event.timestamp.isoformat(),
        "events": len(found),
    }


def retrain_note(asset_name: str, extra: Mapping[str, Any], source_run_id: str | None) -> str:
    """The run note of a lifecycle run that a drift detection requested."""
    features = ", ".join(extra.get("drifted_features") or []) or "none listed"
    return (
        f"Retraining requested by drift: asset {asset_name}, monitor run {source_run_id or extra.get('monitor_run_id')}, "
        f"drift score {extra.get('score')} (threshold {extra.get('threshold')}), drifted features: {features}. "
        f"Report: {extra.get('report_uri')}"
    )
