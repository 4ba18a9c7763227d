"""The monitor DAG factory: one ``monitor__<name>`` DAG per model config.

    slo (Prometheus) ┐
                     ├-> decide -> healthy | insufficient_data | slo_breach | request_retrain
    drift (step)     ┘

``decide`` may branch to several of them at once (a breach and a drift) and
records the window's drift verdict.  ``request_retrain``
(:mod:`mlops_airflow.retraining`) emits the model's retraining Asset, which
also schedules the lifecycle DAG, when drift persists and no cooldown holds it back.
With ``monitor.rollback_on_slo_breach``, a breach also branches to
``request_rollback`` (:mod:`mlops_airflow.rollback_request`), which triggers
``rollback__<name>`` back to the previous stable version, at most once per episode.

Building a DAG only reads the model config; the monitoring library
(Prometheus client, drift, report) is imported inside ``execute``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import DAG, BaseHook, BaseOperator, Context, CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from include.mlops import artifact_store
from include.mlops.artifacts import atomic_write_json, run_dir
from include.mlops.config import ModelConfig
from include.mlops.monitoring import outcome as outcome_lib
from mlops_airflow import alerts
from mlops_airflow.backends import step_operator
from mlops_airflow.retraining import (  # re-exported: the lifecycle DAG and the run notes import them from here
    RETRAIN_REQUESTS_FILE,
    RetrainRequestOperator,
    drift_trigger,
    monitor_results,
    monitoring_window,
    record_window,
    retrain_asset,
    retrain_note,
)
from mlops_airflow.schedules import dag_start_date

log = logging.getLogger(__name__)

PROMETHEUS_CONN_ID = "prometheus_default"
# The task that asks for a rollback (mlops_airflow.rollback_request), for models whose config allows it.
REQUEST_ROLLBACK_TASK_ID = "request_rollback"
PUSHGATEWAY_CONN_ID = "pushgateway_default"
__all__ = ["RetrainRequestOperator", "drift_trigger", "monitoring_window", "retrain_asset", "retrain_note"]
DEFAULT_RETRIES = 1
DEFAULT_RETRY_DELAY = dt.timedelta(minutes=1)
# The branch task each outcome of include.mlops.monitoring.outcome leads to ("drift" is the drift step's id).
OUTCOME_TASKS = {
    outcome_lib.HEALTHY: "healthy",
    outcome_lib.INSUFFICIENT_DATA: "insufficient_data",
    outcome_lib.SLO_BREACH: "slo_breach",
    outcome_lib.DRIFT: "request_retrain",
}

DOC_TEMPLATE = """\
# Monitoring of model `{name}`

Every `{schedule}` this DAG measures the served model `{serving_name}` over the {window} minutes that end
when the run is due (a run triggered by hand: when it was triggered):

* `slo`: request count, error ratio and p95/p99 latency from Prometheus (Connection `prometheus_default`),
  against the objectives below. Prometheus unreachable or too few requests is `insufficient_data` for the SLOs
  (the drift verdict is still acted on).
* `drift`: the logged prediction requests against the training reference of the served version
  (KS or chi-square per feature, Holm-corrected; PSI and Great Expectations reported); scores go to the Pushgateway
  (Connection `pushgateway_default`, when defined).
* `decide` writes `report.html` (its path is in the task log) and branches:
  `healthy`, `insufficient_data` (a warning, never healthy), `slo_breach` (an alert through the SMTP Connection
  `{alert_conn_id}`, recorded in `monitoring/{name}/alerts.jsonl`) and/or `request_retrain`, which emits the
  Asset `{asset}` that schedules `{lifecycle}` when drift was found in {persistence.k} of the last {persistence.n}
  windows of the serving version, at most once per {cooldown} h (`monitoring/{name}/{requests}`). After
  {max_retrains} requests in one drift episode it raises a `drift_persists` alert instead. A skipped
  `request_retrain` logs why (and when the cooldown ends). For a retraining now, trigger `{lifecycle}` by hand.
* {rollback}

| objective | value |
|---|---|
| min requests in window | {slo.min_requests} |
| max error ratio | {slo.max_error_ratio} |
| p95 latency | {slo.p95_latency_ms} ms |
| p99 latency | {slo.p99_latency_ms} ms |
| drift: false-alarm rate per window | {drift.false_alarm_rate} |
| drift: PSI alert threshold | {drift.psi_threshold} |
| drift: min rows | {drift.min_rows} |
"""


def connection_url(conn_id: str) -> str | None:
    """An HTTP Connection's base URL (``http://host:port/path``), or None when it is not defined."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    host = (conn.host or "").rstrip("/")
    port = f":{conn.port}" if conn.port else ""
    if "://" in host:  # typed with its scheme, e.g. in the UI
        return f"{host}{port}"
    return f"{conn.schema or 'http'}://{host}{port}"


def connection_extra(conn_id: str, key: str) -> Any:
    """One key of a Connection's extra (``?key=value`` in an ``AIRFLOW_CONN_...`` URI); None when either is missing."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return conn.extra_dejson.get(key)


class PrometheusHook(BaseHook):
    """Prometheus's base URL from an HTTP Connection (``AIRFLOW_CONN_PROMETHEUS_DEFAULT=http://host:9090``)."""

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = PROMETHEUS_CONN_ID
    conn_type = "http"
    hook_name = "Prometheus"

    def __init__(self, prometheus_conn_id: str = PROMETHEUS_CONN_ID) -> None:
        super().__init__()
        self.prometheus_conn_id = prometheus_conn_id

    def get_conn(self) -> str:
        url = connection_url(self.prometheus_conn_id)
        if url is None:
            raise AirflowException(
                f"Airflow Connection {self.prometheus_conn_id!r} is not defined, so the SLOs cannot be measured. "
                f"Define it with Prometheus's base URL, e.g. "
                f"AIRFLOW_CONN_{self.prometheus_conn_id.upper()}=http://127.0.0.1:9090"
            )
        return url


class SloOperator(BaseOperator):
    """Measure the served model's SLOs over the run's window; write ``slo.json``; return the result.

    Prometheus unreachable (or its Connection undefined) is ``insufficient_data``
    with the reason in ``problems``: a monitor that cannot see is never
    reported healthy, and the run still acts on its drift verdict.
    """

    ui_color = "#fde8e8"

    def __init__(self, *, config: ModelConfig, prometheus_conn_id: str = PROMETHEUS_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.prometheus_conn_id = prometheus_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from include.mlops.monitoring.slo import PrometheusUnavailableError, measure_slo, unmeasured

        _, end = monitoring_window(context, self.config.monitor.window)
        try:
            result = dict(measure_slo(PrometheusHook(self.prometheus_conn_id).get_conn(), self.config, end=end))
        except (PrometheusUnavailableError, AirflowException) as exc:
            log.warning("SLOs not measured (insufficient_data): %s", exc)
            result = unmeasured(self.config, f"SLOs not measured: {exc}")
        out = run_dir(self.dag_id, context["dag_run"].run_id, self.task_id)
        result["result_uri"] = str(atomic_write_json(out / "slo.json", result))
        artifact_store.publish(out)
        log.info("SLO %s over %s min ending %s: %s", result.get("status"), result.get("window_minutes"), end, result)
        return result


def drift_arguments(config: ModelConfig, context: Context) -> dict[str, Any]:
    """The drift step's arguments: the run's window and the Pushgateway, when its Connection is defined."""
    start, end = monitoring_window(context, config.monitor.window)
    pushgateway = connection_url(PUSHGATEWAY_CONN_ID)
    if pushgateway is None:
        log.warning(
            "Connection %r is not defined: drift scores are not pushed (define it, e.g. "
            "AIRFLOW_CONN_PUSHGATEWAY_DEFAULT=http://127.0.0.1:9091)",
            PUSHGATEWAY_CONN_ID,
        )
    return {"window_start": start.isoformat(), "window_end": end.isoformat(), "pushgateway": pushgateway}


class MonitorDecisionOperator(BaseBranchOperator):
    """Decide the window's outcomes (:func:`include.mlops.monitoring.outcome.decide`), write the report, branch.

    Writes ``outcome.json`` and ``report.html`` to the task's run folder and
    pushes XCom ``outcome`` (outcomes, run id, window, report path).
    """

    ui_color = "#fff3d6"

    def __init__(self, *, config: ModelConfig, slo_task_id: str = "slo", drift_task_id: str = "drift", **kwargs: Any):
        super().__init__(**kwargs)
        self.config = config
        self.slo_task_id = slo_task_id
        self.drift_task_id = drift_task_id

    def choose_branch(self, context: Context) -> list[str]:
        from include.mlops.monitoring.report import write_report

        ti = context["ti"]
        slo: Mapping[str, Any] | None = ti.xcom_pull(task_ids=self.slo_task_id)
        drift: Mapping[str, Any] | None = ti.xcom_pull(task_ids=self.drift_task_id)
        outcomes = outcome_lib.decide(slo, drift)
        window = record_window(self.config, context, drift)
        log.info("Drift verdict recorded for the window ending %s: %s", window["window_end"], window)
        run_id = context["dag_run"].run_id
        out = run_dir(self.dag_id, run_id, self.task_id)
        report = write_report(self.config, dict(slo) if slo else None, dict(drift) if drift else None, outcomes, out)
        start, end = monitoring_window(context, self.config.monitor.window)
        # The run id and window let the Models view name the run and find the newest (folder names lose both).
        record = {
            "outcomes": outcomes,
            "run_id": run_id,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "report_uri": str(report),
            "slo_uri": _uri(slo),
            "drift_uri": _uri(drift),
        }
        atomic_write_json(out / "outcome.json", record)
        artifact_store.publish(out)
        ti.xcom_push(key="outcome", value=record)
        log.info("Monitoring outcome: %s", ", ".join(outcomes))
        log.info("Report: %s", report.resolve().as_uri())
        return branch_tasks(self.config, outcomes)


def branch_tasks(config: ModelConfig, outcomes: list[str]) -> list[str]:
    """The tasks ``decide`` follows for ``outcomes``: an SLO breach also requests a rollback when the config says so."""
    tasks = [OUTCOME_TASKS[o] for o in outcomes]
    if outcome_lib.SLO_BREACH in outcomes and config.monitor.rollback_on_slo_breach:
        tasks.append(REQUEST_ROLLBACK_TASK_ID)
    return tasks


def _uri(result: Mapping[str, Any] | None) -> str | None:
    return result.get("result_uri") if result else None


class MonitorLogOperator(BaseOperator):
    """``healthy`` or ``insufficient_data``: say what was measured (insufficient data is a warning)."""

    def execute(self, context: Context) -> None:
        slo, drift, decided = monitor_results(context)
        level = logging.INFO if self.task_id == "healthy" else logging.WARNING
        log.log(level, "Outcome %s. SLO: %s %s", self.task_id, slo.get("status"), slo.get("figures"))
        log.log(level, "Drift: %s, score %s over %s rows", drift.get("status"), drift.get("score"), drift.get("rows"))
        for problem in [*slo.get("problems", []), *drift.get("problems", [])]:
            log.log(level, "Problem: %s", problem)
        log.log(level, "Report: %s", decided.get("report_uri"))


class SloBreachOperator(BaseOperator):
    """Alert on an SLO breach through the model's alert Connection (recorded in ``alerts.jsonl`` first)."""

    ui_color = "#f8c9c9"

    def __init__(self, *, config: ModelConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config

    def execute(self, context: Context) -> bool:
        slo, _, decided = monitor_results(context)
        run_id = context["dag_run"].run_id
        breaches = list(slo.get("breaches") or [])
        if not self.config.monitor.rollback_on_slo_breach:
            log.info("No rollback requested: monitor.rollback_on_slo_breach is off in %s's config", self.config.name)
        subject = f"[mlops] SLO breach of model {self.config.name}: {'; '.join(breaches) or 'see the report'}"
        details = {
            "dag_id": self.dag_id,
            "run_id": run_id,
            "breaches": breaches,
            "figures": slo.get("figures"),
            "slo": slo.get("slo"),
            "window_minutes": slo.get("window_minutes"),
            "report_uri": decided.get("report_uri"),
        }
        return alerts.alert(
            model=self.config.name,
            kind="slo_breach",
            subject=subject,
            details=details,
            conn_id=self.config.monitor.alert_conn_id,
            context=context,
        )


def _rollback_doc(config: ModelConfig) -> str:
    if not config.monitor.rollback_on_slo_breach:
        return "An SLO breach requests no rollback (`monitor.rollback_on_slo_breach` is off)."
    return (
        f"`request_rollback` (on an SLO breach) triggers `rollback__{config.name}` to put `stable` back on the "
        f"version it named before, at most once per {config.monitor.cooldown_hours:g} h, and not when a rollback "
        "put the current version there within that time; a skip logs why."
    )


def _doc_md(config: ModelConfig) -> str:
    monitor = config.monitor
    return DOC_TEMPLATE.format(
        name=config.name,
        serving_name=config.serving_name,
        schedule=monitor.schedule,
        window=monitor.window_minutes,
        alert_conn_id=monitor.alert_conn_id,
        asset=retrain_asset(config).name,
        lifecycle=config.dag_id,
        cooldown=monitor.cooldown_hours,
        requests=RETRAIN_REQUESTS_FILE,
        persistence=monitor.drift.persistence,
        max_retrains=monitor.max_retrains,
        slo=monitor.slo,
        drift=monitor.drift,
        rollback=_rollback_doc(config),
    )


def build_monitor_dag(config: ModelConfig, *, models_dir: str | None = None) -> DAG:
    """The monitor DAG of one model.  Pure: reads only ``config``."""
    with DAG(
        dag_id=config.monitor_dag_id,
        description=f"SLOs and input drift of the served model {config.serving_name}",
        doc_md=_doc_md(config),
        # Data-interval semantics: the run after hour H measures the window that ends at H+1.
        schedule=CronDataIntervalTimetable(config.monitor.schedule, timezone="UTC"),
        start_date=dag_start_date(config),
        catchup=False,
        max_active_runs=1,
        tags=["monitor", config.task, *config.tags],
        default_args={"owner": config.owner, "retries": DEFAULT_RETRIES, "retry_delay": DEFAULT_RETRY_DELAY},
    ) as dag:
        slo = SloOperator(task_id="slo", config=config)
        drift = step_operator(
            task_id="drift",
            step="drift",
            model=config.name,
            config=config,
            models_dir=models_dir,
            resolve_arguments=lambda context: drift_arguments(config, context),
        )
        decide = MonitorDecisionOperator(task_id="decide", config=config)
        branches: list[BaseOperator] = [
            MonitorLogOperator(task_id=OUTCOME_TASKS[outcome_lib.HEALTHY]),
            MonitorLogOperator(task_id=OUTCOME_TASKS[outcome_lib.INSUFFICIENT_DATA]),
            SloBreachOperator(task_id=OUTCOME_TASKS[outcome_lib.SLO_BREACH], config=config),
            RetrainRequestOperator(task_id=OUTCOME_TASKS[outcome_lib.DRIFT], config=config),
        ]
        if config.monitor.rollback_on_slo_breach:
            # Imported here: its base class's module costs every DAG file's parse about 0.3 s.
            from mlops_airflow.rollback_request import RollbackRequestOperator

            branches.append(RollbackRequestOperator(task_id=REQUEST_ROLLBACK_TASK_ID, config=config))
        [slo, drift] >> decide >> branches
    return dag
