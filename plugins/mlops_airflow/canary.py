"""Progressive delivery in the lifecycle DAG, when the model config has a ``deploy.canary`` block.

    register -> deploy_canary (setup) -> canary_analysis -> [approve_canary] -> promote -> end_canary (teardown)
             -> canary_outcome

- ``deploy_canary``: the deploy step for label ``canary`` (infra validation,
  journaled move, verified through the server).
- ``canary_analysis``: sends each step's share of the traffic addressed to
  ``stable`` to the canary (the route: :func:`traffic_split`), then defers to
  :class:`CanaryCheckTrigger`, which waits out the window on the triggerer (no
  worker slot held) and judges it from Prometheus
  (:mod:`include.mlops.deploy.canary_analysis`, Flagger's semantics).  It ends
  when the last step passed, or fails with the analysis summary when the
  canary is aborted (``failure_limit`` failed or ``inconclusive_limit``
  inconclusive checks).
- ``approve_canary`` (``deploy.canary.approval``): Airflow's
  ``ApprovalOperator``, showing the analysis summary.  Reject, or no answer
  within ``approval_timeout_s`` (its default is Reject), skips ``promote``.
- ``promote``: the deploy step for ``stable`` with the canary's version, one
  journaled, verified move.
- ``end_canary``: a teardown of ``deploy_canary``, so it runs however the
  tasks between ended (failed, skipped, rejected): it closes the route
  (weight 0, applied by the server) and then removes the ``canary`` label
  (the undeploy step).  ``stable`` is untouched unless ``promote`` moved it.
- ``canary_outcome``: the run's verdict (:class:`CanaryOutcomeOperator`).

Every label move is in the model's audit log with the reason: the gate, the
analysis summary, the approver, or why the canary ended.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from include.mlops.config import ModelConfig
from include.mlops.config.deploy import CanaryConfig
from mlops_airflow.backends import resolve_backend
from mlops_airflow.deploy_tasks import DEPLOY_POOL, audit_arguments, deploy_arguments, model_server_url
from mlops_airflow.monitoring import PROMETHEUS_CONN_ID, PrometheusHook

log = logging.getLogger(__name__)

ANALYSIS_TASK_ID = "canary_analysis"
APPROVAL_TASK_ID = "approve_canary"
PROMOTE_TASK_ID = "promote"
DEPLOY_CANARY_TASK_ID = "deploy_canary"
END_TASK_ID = "end_canary"
OUTCOME_TASK_ID = "canary_outcome"
CANARY_LABEL = "canary"


def traffic_split(server_url: str | None) -> Any:
    """Where the canary weight lives: the Gateway API HTTPRoute on kubernetes, else the registry's route file."""
    if resolve_backend() == "kubernetes":
        return _HttpRouteSplit()
    from include.mlops.artifacts import registry_root
    from include.mlops.deploy.traffic_split import LocalRoute

    return _LocalSplit(LocalRoute(registry_root()), server_url)


class _LocalSplit:
    """The registry's route file, and the wait until the model server applies it (when its URL is known)."""

    def __init__(self, route: Any, server_url: str | None) -> None:
        self.route = route
        self.server_url = server_url

    def set_canary_weight(self, name: str, percent: int) -> None:
        self.route.set_canary_weight(name, percent)
        if self.server_url is not None:
            self.route.wait_applied(self.server_url, name, percent)


class _HttpRouteSplit:
    """The canary overlay's HTTPRoute (include/k8s/serving/canary), changed through the cncf-kubernetes provider."""

    def set_canary_weight(self, name: str, percent: int) -> None:
        from mlops_airflow.canary_route import set_canary_weight

        set_canary_weight(name, percent)


def set_weight(config: ModelConfig, percent: int, server_url: str | None) -> None:
    log.info("%s: sending %d %% of the traffic addressed to stable to the canary", config.serving_name, percent)
    traffic_split(server_url).set_canary_weight(config.serving_name, percent)


class CanaryCheckTrigger(BaseTrigger):
    """Wait until ``check_at`` (epoch seconds), then judge the window before it from Prometheus; one event."""

    def __init__(
        self, *, prometheus_url: str, model_name: str, check_at: float, canary: Mapping[str, Any], weight: int
    ) -> None:
        super().__init__()
        self.prometheus_url = prometheus_url
        self.model_name = model_name
        self.check_at = check_at
        self.canary = dict(canary)
        self.weight = weight

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prometheus_url": self.prometheus_url,
                "model_name": self.model_name,
                "check_at": self.check_at,
                "canary": self.canary,
                "weight": self.weight,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(max(0.0, self.check_at - time.time()))
        result = await asyncio.to_thread(judge_window, self.prometheus_url, self.model_name, self.canary, self.weight)
        yield TriggerEvent({"result": result})


def judge_window(prometheus_url: str, model_name: str, canary: Mapping[str, Any], weight: int) -> dict[str, Any]:
    """The check of the window that ends now, as JSON (Prometheus down or undefined: inconclusive)."""
    from include.mlops.deploy.canary_analysis import judge
    from include.mlops.deploy.canary_metrics import measure_canary

    config = CanaryConfig(**{**canary, "steps": tuple(canary["steps"])})
    if not prometheus_url:
        from include.mlops.deploy.canary_analysis import Measurements

        end = time.time()
        measured = Measurements(weight=weight, end=end, interval_s=config.interval_s, stable=None, canary=None,
                                unavailable=f"Connection {PROMETHEUS_CONN_ID!r} is not defined")  # fmt: skip
    else:
        measured = measure_canary(prometheus_url, model_name, weight=weight, interval_s=config.interval_s)
    return judge(measured, config).to_dict()


class CanaryAnalysisOperator(BaseOperator):
    """Walk the canary through ``deploy.canary.steps``, one deferred analysis window per check."""

    ui_color = "#e6f0ff"

    def __init__(
        self,
        *,
        config: ModelConfig,
        server_url_getter: Any,
        prometheus_conn_id: str = PROMETHEUS_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.server_url_getter = server_url_getter
        self.prometheus_conn_id = prometheus_conn_id

    @property
    def canary(self) -> CanaryConfig:
        assert self.config.deploy.canary is not None
        return self.config.deploy.canary

    def execute(self, context: Context) -> Any:
        from include.mlops.deploy.canary_progress import CanaryState

        deployed = context["ti"].xcom_pull(task_ids=DEPLOY_CANARY_TASK_ID) or {}
        if deployed.get("label") != CANARY_LABEL:
            raise AirflowSkipException(
                f"version {deployed.get('version')} went to {deployed.get('label')!r}: the model had no stable "
                "version to compare a canary with, so there is nothing to analyse or promote"
            )
        self._next_window(CanaryState().to_dict(), self._prometheus_url())

    def _prometheus_url(self) -> str:
        try:
            return PrometheusHook(self.prometheus_conn_id).get_conn()
        except AirflowException as exc:  # an undefined Connection: every check is inconclusive, never a pass
            log.warning("%s; every canary check will be inconclusive", exc)
            return ""

    def _next_window(self, state: dict[str, Any], prometheus_url: str) -> None:
        from include.mlops.deploy.canary_progress import CanaryState, current_weight

        weight = current_weight(CanaryState.from_dict(state), self.canary)
        set_weight(self.config, weight, self.server_url_getter())
        check_at = time.time() + self.canary.interval_s
        log.info(
            "%s: analysing the canary at %d %% until %s",
            self.config.serving_name,
            weight,
            dt.datetime.fromtimestamp(check_at, dt.UTC).isoformat(timespec="seconds"),
        )
        self.defer(
            trigger=CanaryCheckTrigger(
                prometheus_url=prometheus_url,
                model_name=self.config.serving_name,
                check_at=check_at,
                canary=_canary_kwargs(self.canary),
                weight=weight,
            ),
            method_name="resume",
            kwargs={"state": state, "prometheus_url": prometheus_url},
        )

    def resume(self, context: Context, state: dict[str, Any], prometheus_url: str, event: Mapping[str, Any]) -> Any:
        from include.mlops.deploy.canary_analysis import CheckResult
        from include.mlops.deploy.canary_progress import CanaryState, advance

        result = CheckResult.from_dict(event["result"])
        new_state, action = advance(CanaryState.from_dict(state), result, self.canary)
        log.info("%s: %s -> %s (%d failed, %d inconclusive so far)", self.config.serving_name, result.summary(),
                 action, new_state.failed_checks, new_state.inconclusive_checks)  # fmt: skip
        if action in ("next_step", "repeat"):
            return self._next_window(new_state.to_dict(), prometheus_url)
        summary = analysis_summary(new_state, action)
        context["ti"].xcom_push(key="analysis", value=summary)
        if action == "abort":
            raise AirflowFailException(f"canary aborted: {summary['summary']}")
        log.info("%s: the canary passed every step: %s", self.config.serving_name, summary["summary"])
        return summary


def analysis_summary(state: Any, action: str) -> dict[str, Any]:
    """What the approval form, the audit log and the run show: the verdict, the counters and every check."""
    checks = [result.summary() for result in state.history]
    verdict = "passed every step" if action == "promote" else "aborted"
    text = (
        f"{verdict} after {len(checks)} checks ({state.failed_checks} failed, {state.inconclusive_checks} "
        f"inconclusive); last: {checks[-1] if checks else 'none'}"
    )
    return {"action": action, "summary": text, "checks": checks, "state": state.to_dict()}


def _canary_kwargs(canary: CanaryConfig) -> dict[str, Any]:
    import dataclasses

    values = dataclasses.asdict(canary)
    values["steps"] = list(values["steps"])
    return values


def approval_operator(config: ModelConfig) -> BaseOperator:
    """The human check before promote: Approve or Reject, Reject when nobody answers in time."""
    from mlops_airflow.canary_approval import CanaryApprovalOperator as ApprovalOperator

    canary = config.deploy.canary
    assert canary is not None
    return ApprovalOperator(
        task_id=APPROVAL_TASK_ID,
        subject=f"Promote {config.serving_name} version {{{{ ti.xcom_pull(task_ids='{DEPLOY_CANARY_TASK_ID}')"
        "['version'] }} to stable?",
        body="Canary analysis: {{ ti.xcom_pull(task_ids='" + ANALYSIS_TASK_ID + "', key='analysis')['summary'] }}"
        "\n\nReports: the Models view's model page, and this run's canary_analysis log.",
        defaults=ApprovalOperator.REJECT,
        response_timeout=dt.timedelta(seconds=canary.approval_timeout_s),
    )


def end_reason(context: Context) -> str:
    """Why the canary ends, for the audit log: promoted, aborted by the analysis, rejected, or stopped early."""
    ti = context["ti"]
    promoted = ti.xcom_pull(task_ids=PROMOTE_TASK_ID)
    if isinstance(promoted, Mapping) and promoted.get("version") is not None:
        return f"canary promoted: stable is version {promoted['version']}"
    analysis = ti.xcom_pull(task_ids=ANALYSIS_TASK_ID, key="analysis")
    if isinstance(analysis, Mapping) and analysis.get("action") == "abort":
        return f"canary rolled back: analysis aborted it ({analysis.get('summary')})"
    approval = _approval(context)
    if approval is not None:
        return f"canary rolled back: promotion {approval[0]} by {approval[1] or 'nobody (timed out, default Reject)'}"
    return "canary rolled back: the run ended before promotion (a failed or stopped task)"


class CanaryOutcomeOperator(BaseOperator):
    """The run's verdict on the canary, after ``end_canary``: what happened, and a failure when it went wrong.

    The run's state follows it: a promotion or a person's rejection succeeds;
    an aborted analysis, a canary that was not deployed or could not be
    removed, or a promotion that failed, fails the run with the reason.
    """

    ui_color = "#e6f0ff"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trigger_rule="all_done", **kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        deployed = ti.xcom_pull(task_ids=DEPLOY_CANARY_TASK_ID)
        if not isinstance(deployed, Mapping):
            raise AirflowFailException(
                f"the canary was not deployed (see {DEPLOY_CANARY_TASK_ID}); stable is untouched"
            )
        if deployed.get("label") != CANARY_LABEL:
            return {"outcome": "first_version", "version": deployed.get("version"),
                    "said": f"version {deployed.get('version')} is the first stable version (no canary)"}  # fmt: skip
        ended = ti.xcom_pull(task_ids=END_TASK_ID)
        if not isinstance(ended, Mapping):
            raise AirflowFailException(f"the canary label may still be set: {END_TASK_ID} did not finish; rerun it")
        reason = end_reason(context)
        log.info("%s", reason)
        if reason.startswith("canary promoted"):
            return {"outcome": "promoted", "version": deployed.get("version"), "said": reason}
        if "promotion Reject" in reason:
            return {"outcome": "rejected", "version": deployed.get("version"), "said": reason}
        raise AirflowFailException(reason)


def end_canary_arguments(config: ModelConfig, context: Context) -> dict[str, Any]:
    """Close the route (weight 0, applied), then the undeploy step's arguments: remove the canary label."""
    from mlops_airflow.deploy_tasks import model_server_poll_seconds

    server_url = model_server_url()
    set_weight(config, 0, server_url)
    return {
        "label": CANARY_LABEL,
        "server_url": server_url,
        "server_poll_seconds": model_server_poll_seconds() if server_url is not None else None,
        **audit_arguments(context, end_reason(context)),
    }


def promote_reason(context: Context) -> str:
    analysis = context["ti"].xcom_pull(task_ids=ANALYSIS_TASK_ID, key="analysis") or {}
    reason = f"canary analysis passed ({analysis.get('summary', 'no summary')})"
    approval = _approval(context)
    if approval is not None:
        reason += f"; approved by {approval[1]}"
    return reason


def _approval(context: Context) -> tuple[str, str | None] | None:
    """The approval's answer and who gave it (None: nobody, the timeout's default), or None without one."""
    decision = context["ti"].xcom_pull(task_ids=APPROVAL_TASK_ID, key="decision")
    if not isinstance(decision, Mapping) or not decision.get("chosen_options"):
        return None
    who = decision.get("responded_by_user")
    if isinstance(who, Mapping):
        who = who.get("name") or who.get("id")
    return decision["chosen_options"][0], who


def canary_delivery(config: ModelConfig, register: BaseOperator, step: Any) -> None:
    """Add the canary tasks after ``register`` (``step(task_id, step_name, **kwargs)`` builds a step task)."""
    canary = config.deploy.canary
    assert canary is not None
    deploy_canary = step(
        DEPLOY_CANARY_TASK_ID,
        "deploy",
        resolve_arguments=lambda c: {**deploy_arguments(c, label=CANARY_LABEL), "stable_first": True},
        pool=DEPLOY_POOL,
        pool_slots=1,
    )
    # No retries: a retry would start the steps over while the first attempt's route share is still set;
    # the teardown closes the route and removes the canary whatever this task's end.
    analysis = CanaryAnalysisOperator(
        task_id=ANALYSIS_TASK_ID, config=config, server_url_getter=model_server_url, retries=0
    )
    promote = step(
        PROMOTE_TASK_ID,
        "deploy",
        resolve_arguments=lambda c: deploy_arguments(
            c, label="stable", version_task=DEPLOY_CANARY_TASK_ID, reason=promote_reason(c)
        ),
        pool=DEPLOY_POOL,
        pool_slots=1,
    )
    end = step(
        END_TASK_ID,
        "undeploy",
        resolve_arguments=lambda c: end_canary_arguments(config, c),
        pool=DEPLOY_POOL,
        pool_slots=1,
    )
    register >> deploy_canary >> analysis
    if canary.approval:
        analysis >> approval_operator(config) >> promote
    else:
        analysis >> promote
    promote >> end.as_teardown(setups=deploy_canary, on_failure_fail_dagrun=True)
    end >> CanaryOutcomeOperator(task_id=OUTCOME_TASK_ID)
