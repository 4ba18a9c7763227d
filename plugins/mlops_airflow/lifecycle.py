"""The lifecycle DAG factory: one DAG per model config.

    snapshot -> validate -> train -> evaluate -> gate
        gate passes -> register -> deploy
        gate fails  -> tune_plan -> tune_trial (mapped, one task per trial, pool mlops_tuning)
                    -> tune_select -> compress -> evaluate_optimized -> gate_optimized -> register -> deploy | reject
        backfill runs and runs with skip_deploy -> skip_deploy (no registry write, no label move)
        a passing candidate identical to the champion (same fingerprint) -> skip_deploy, nothing registered

The step tasks come from :mod:`mlops_airflow.backends`; the gates and the
``skip_deploy`` and ``reject`` ends from :mod:`mlops_airflow.gate_operators`.

Building a DAG only reads the model config: no TensorFlow, pandas or Great
Expectations is imported, and nothing touches the network or a database.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import (
    DAG,
    AssetOrTimeSchedule,
    BaseOperator,
    Context,
    CronDataIntervalTimetable,
    TriggerRule,
)
from airflow.sdk.exceptions import AirflowFailException

from include.mlops.config import ModelConfig
from include.mlops.registry.fingerprint import LINEAGE_KEY
from mlops_airflow import alerts
from mlops_airflow.backends import mapped_step_operator, step_operator
from mlops_airflow.canary import canary_delivery
from mlops_airflow.deploy_tasks import DEPLOY_POOL, deploy_arguments
from mlops_airflow.gate_operators import (
    GateOperator,
    RejectOperator,
    SkipDeployOperator,
    accepted_candidate,
    run_type,
)
from mlops_airflow.monitoring import drift_trigger, retrain_asset
from mlops_airflow.params import (
    RefusedParamsError,
    check_gate_params,
    check_run_conf,
    lifecycle_params,
    training_overrides,
)
from mlops_airflow.schedules import dag_start_date as _start_date

log = logging.getLogger(__name__)

# Bounds how many tuning trials (each a training run, with GPUs on kubernetes) run at once, over all models.
TUNING_POOL = "mlops_tuning"
DEFAULT_RETRIES = 1
DEFAULT_RETRY_DELAY = dt.timedelta(minutes=1)

DOC_TEMPLATE = """\
# Lifecycle of model `{name}`

{description}

**Task:** {task} · **Data:** {source} · **Config:** `{config_file}` · **Builder:** `{builder}.py`

Every night this DAG snapshots the day's data, validates it with the Great Expectations suite
`include/gx/{name}.json`, trains, and evaluates the candidate against the `stable` version on the
same held-out rows. The gate (thresholds, change threshold against `stable`, size and latency budgets)
sends a passing candidate to `register` and `deploy` (one identical to `stable`, made from the same data,
config, hyperparameters, seed and code, to `skip_deploy`: nothing new to register), a failing one to the optimize branch:
`tune_plan` asks Optuna for {trials} hyperparameter sets, `tune_trial` trains each as its own mapped task
(pool `{tuning_pool}`), `tune_select` keeps the lowest validation loss (at least {min_successful} trial(s)
must succeed), `compress` shrinks it when a budget failed, and a second gate deploys or rejects it
(`gate_optimized/decision.json` links the optimization report).

* **Trigger with config**: change epochs, learning rate, batch size, gate thresholds and max regression;
  `force_deploy` overrides the gate (recorded as an override), `skip_deploy` never deploys. A `stable` version
  that evaluate cannot score fails the gate (it fails closed) unless `accept_without_champion` is set (recorded).
* **Backfill** past days with `airflow backfill create --dag-id {dag_id} --from-date ... --to-date ...`:
  backfill runs train and evaluate (quality history) but never register or move a label.
* **Retraining on drift**: besides its cron, a run starts when `monitor__{name}` emits the Asset
  `retrain__{name}` (at most once per cooldown); its note and model card name the monitor run and drift score.
  {deadline}
* Outputs: `runs/{dag_id}/<run_id>/<task_id>/` under the artifact root; the registry is `models/{serving_name}/`.

| gate | value |
|---|---|
{gate_rows}
"""


def _doc_md(config: ModelConfig) -> str:
    rows = [
        f"| {metric} {bound} | {value} |" for metric, b in config.gate.thresholds.items() for bound, value in b.items()
    ]
    rows += [
        f"| {metric} max regression vs stable | {value:.0%} |" for metric, value in config.gate.max_regression.items()
    ]
    rows += [f"| budget {metric} | {value} |" for metric, value in config.gate.budgets.items()]
    source = config.source.dataset if config.source.kind == "bundled" else config.source.uri
    return DOC_TEMPLATE.format(
        name=config.name,
        dag_id=config.dag_id,
        description=config.description,
        task=config.task,
        source=f"{config.source.kind} `{source}`",
        config_file=config.path.name,
        builder=config.builder,
        serving_name=config.serving_name,
        trials=config.optimize.search.trials,
        min_successful=config.optimize.search.min_successful,
        tuning_pool=TUNING_POOL,
        gate_rows="\n".join(rows) or "| (none) | |",
        deadline=(
            f"A run not finished {config.monitor.deadline_minutes:g} min after it was queued alerts through the "
            f"Connection `{config.monitor.alert_conn_id}`."
            if config.monitor.deadline_minutes
            else "Runs have no deadline."
        ),
    )


def _schedule(config: ModelConfig) -> AssetOrTimeSchedule:
    """The model's cron, or its retraining Asset (emitted by ``monitor__<name>`` on drift)."""
    # Data-interval semantics: the run for day D starts after D ends and sees
    # the data of [D, D+1).  (A plain cron string would give Airflow 3's
    # CronTriggerTimetable, whose interval is empty.)
    return AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable(config.schedule, timezone="UTC"), assets=[retrain_asset(config)]
    )


def data_interval(context: Context, config: ModelConfig | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The run's data interval.

    A run that the retraining Asset triggered has none (Airflow 3.3), and the
    day before it ran is the interval the nightly run already trained on: it
    takes the most recent complete data instead, the interval that ends when
    the drift was detected (the newest triggering event's timestamp), over the
    source's ``lookback_days``.  Any other run without one takes the day before it ran.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        return start, end
    trigger = drift_trigger(context)
    if trigger is not None:
        end = pendulum.parse(trigger["event_timestamp"]).in_timezone("UTC")
        days = config.source.lookback_days if config is not None else 1
        return end.subtract(days=days), end
    end = pendulum.instance(context["dag_run"].run_after).start_of("day")
    return end.subtract(days=1), end


def check_trigger_conf(context: Context, config: ModelConfig) -> None:
    """Fail the task, without retries, on a conf key that is no Param or gate thresholds no model can meet."""
    try:
        check_run_conf(context["dag_run"].conf, context["dag"].params.keys())
        check_gate_params(config, context["params"])
    except RefusedParamsError as exc:
        raise AirflowFailException(str(exc)) from None


def _register_arguments(context: Context, config: ModelConfig) -> dict[str, Any]:
    """register's arguments; its lineage cites the run files that register copies into the version.

    ``try_number`` tells apart the tries of one run id: a reprocessing
    backfill re-runs a run under the same id and rewrites its run folders.
    """
    candidate = accepted_candidate(context)
    snapshot = context["ti"].xcom_pull(task_ids="snapshot") or {}
    start, end = data_interval(context, config)
    dag_run = context["dag_run"]
    return {
        "candidate": candidate["model_uri"],
        "tflite": candidate.get("tflite_uri"),
        "evaluation": candidate["evaluation_uri"],
        "gate": candidate["decision_uri"],
        "lineage": {
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "run_type": run_type(dag_run),
            "data_interval_start": start.isoformat(),
            "data_interval_end": end.isoformat(),
            "snapshot_sha256": snapshot.get("sha256"),
            "created_at": end.isoformat(),
            "try_number": context["ti"].try_number,
            "data_uri": snapshot.get("data_uri"),
            "gate_uri": candidate["decision_uri"],
            # A run requested by a drift detection (the retraining Asset) says so in the model card.
            "triggered_by": drift_trigger(context),
            # What made the candidate; the next run's first gate compares its own with it.
            LINEAGE_KEY: candidate["fingerprint"],
        },
    }


def build_lifecycle_dag(config: ModelConfig, *, models_dir: str | None = None) -> DAG:
    """The lifecycle DAG of one model.  Pure: reads only ``config``."""

    def step(task_id: str, step_name: str, **kwargs: Any) -> BaseOperator:
        return step_operator(
            task_id=task_id, step=step_name, model=config.name, config=config, models_dir=models_dir, **kwargs
        )

    with DAG(
        dag_id=config.dag_id,
        description=config.description or f"Lifecycle of model {config.name}",
        doc_md=_doc_md(config),
        schedule=_schedule(config),
        deadline=alerts.deadline_alert(config),
        start_date=_start_date(config),
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", config.task, *config.tags],
        params=lifecycle_params(config),
        default_args={
            "owner": config.owner,
            "retries": DEFAULT_RETRIES,
            "retry_delay": DEFAULT_RETRY_DELAY,
        },
    ) as dag:

        def snapshot_arguments(context: Context) -> dict[str, str]:
            # The first task: a misspelt trigger setting or an impossible threshold stops the run before any work.
            check_trigger_conf(context, config)
            start, end = data_interval(context, config)
            return {"interval_start": start.isoformat(), "interval_end": end.isoformat()}

        def data(context: Context) -> str:
            return context["ti"].xcom_pull(task_ids="snapshot")["data_uri"]

        snapshot = step("snapshot", "snapshot", resolve_arguments=snapshot_arguments)
        validate = step("validate", "validate", resolve_arguments=lambda c: {"data": data(c)})
        train = step(
            "train",
            "train",
            resolve_arguments=lambda c: {"data": data(c), "overrides": training_overrides(c["params"])},
        )
        evaluate = step(
            "evaluate",
            "evaluate",
            resolve_arguments=lambda c: {
                "data": data(c),
                "candidate": c["ti"].xcom_pull(task_ids="train")["model_uri"],
            },
        )
        gate = GateOperator(
            task_id="gate", config=config, evaluate_task_id="evaluate", on_fail="optimize", train_task_id="train"
        )

        def tune_plan_arguments(context: Context) -> dict[str, Any]:
            return {"overrides": training_overrides(context["params"])}

        def plan(context: Context) -> Mapping[str, Any]:
            return context["ti"].xcom_pull(task_ids="tune_plan")

        def tune_trial_arguments(context: Context) -> dict[str, Any]:
            # The mapped instance's own trial: map index i runs the plan's trial i.
            index = context["ti"].map_index
            return {"data": data(context), "hparams": plan(context)["trials"][index]["hparams"]}

        def tune_select_arguments(context: Context) -> dict[str, Any]:
            plan_uri = plan(context)["plan_uri"]
            # The trials write beside the plan, under the same artifact root as the steps see it.
            return {"plan": plan_uri, "trials_dir": str(Path(plan_uri).parent.parent / "tune_trial")}

        def compress_arguments(context: Context) -> dict[str, Any]:
            selected = context["ti"].xcom_pull(task_ids="tune_select")
            gate_outcome = context["ti"].xcom_pull(task_ids="gate", key="decision")
            return {
                "data": data(context),
                "candidate": selected["model_uri"],
                "weights": selected["weights_uri"],
                "hparams": selected["hparams"],
                "trials": selected["trials_uri"],
                "failed": ",".join(sorted(gate_outcome["failed_budgets"])),
            }

        search = config.optimize.search
        tune_plan = step("tune_plan", "tune-plan", resolve_arguments=tune_plan_arguments)
        tune_trial = mapped_step_operator(
            task_id="tune_trial",
            step="tune-trial",
            model=config.name,
            config=config,
            models_dir=models_dir,
            expand_arguments=[{"trial": index} for index in range(search.trials)],
            resolve_arguments=tune_trial_arguments,
            pool=TUNING_POOL,
        )
        # Upstream: tune_plan and every trial.  Runs once the plan succeeded and every trial is done,
        # failed ones included (selection needs min_successful of them, and says why when it has fewer);
        # skipped with the branch when the gate did not route here; upstream_failed, never run, when
        # an earlier task failed (no plan, so no trial).
        tune_select = step(
            "tune_select",
            "tune-select",
            resolve_arguments=tune_select_arguments,
            trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
        )
        compress = step("compress", "compress", resolve_arguments=compress_arguments)
        evaluate_optimized = step(
            "evaluate_optimized",
            "evaluate",
            resolve_arguments=lambda c: {
                "data": data(c),
                "candidate": c["ti"].xcom_pull(task_ids="compress")["model_uri"],
                "tflite": c["ti"].xcom_pull(task_ids="compress").get("tflite_uri"),
            },
        )
        gate_optimized = GateOperator(
            task_id="gate_optimized",
            config=config,
            evaluate_task_id="evaluate_optimized",
            on_fail="reject",
            report_task_id="compress",
        )

        register = step(
            "register",
            "register",
            resolve_arguments=lambda c: _register_arguments(c, config),
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        )
        skipped = SkipDeployOperator(task_id="skip_deploy", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        rejected = RejectOperator(task_id="reject")

        snapshot >> validate >> train >> evaluate >> gate
        gate >> [register, tune_plan, skipped]
        tune_plan >> tune_trial >> tune_select >> compress >> evaluate_optimized >> gate_optimized
        tune_plan >> tune_select
        gate_optimized >> [register, rejected, skipped]
        if config.deploy.canary is None:
            register >> step("deploy", "deploy", resolve_arguments=deploy_arguments, pool=DEPLOY_POOL, pool_slots=1)
        else:
            canary_delivery(config, register, step)
    return dag
