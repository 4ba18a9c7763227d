"""The lifecycle DAG's gates and the ends they route to besides ``register``: ``skip_deploy`` and ``reject``.

A gate applies :mod:`include.mlops.evaluation.gate` to one evaluation and
branches; whether the run may deploy at all (not a backfill, no
``skip_deploy``) is decided here too, since both the gates and ``skip_deploy``
ask it.  The first gate also sends a candidate identical to the champion
(:func:`include.mlops.registry.fingerprint.identical_to_champion`) to
``skip_deploy``: there is nothing new to register.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, DownstreamTasksSkipped
from airflow.task.trigger_rule import TriggerRule

from include.mlops import artifact_store
from include.mlops.artifacts import atomic_write_json, atomic_write_text, read_json, run_dir
from include.mlops.config import ModelConfig
from include.mlops.evaluation import gate as gate_lib
from include.mlops.registry.fingerprint import OPTIMIZE_STAGE, IdenticalToChampion, for_stage, identical_to_champion
from mlops_airflow.params import GATE_PARAMS, run_gate_config

log = logging.getLogger(__name__)

# The first gate's "optimize" route starts the optimize branch at this task; "identical" ends in skip_deploy.
ROUTE_TASKS = {"optimize": "tune_plan", "identical": "skip_deploy"}
# The gates' task ids (skip_deploy reads the first one's outcome to say why the run did not deploy), and the
# task whose result holds the trained candidate's fingerprint.
FIRST_GATE, OPTIMIZED_GATE, TRAIN_TASK = "gate", "gate_optimized", "train"
BACKFILL_RUN_TYPE = "backfill"


# Trigger rules under which a task whose upstream tasks were all skipped is skipped as well.
SKIPPED_WITH_ALL_UPSTREAM = frozenset(
    {
        TriggerRule.ALL_SUCCESS,
        TriggerRule.ONE_SUCCESS,
        TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
    }
)


def skipped_with(dag: Any, skipped: set[str]) -> set[str]:
    """The tasks the scheduler would skip after ``skipped``: those whose every upstream task is skipped, repeatedly.

    The scheduler finds them one level per pass (about a second each); a gate
    that skips them together takes the optimize branch's six levels off the
    way from the gate to ``register``.  Only tasks whose trigger rule skips
    them when all their upstream tasks are skipped (:data:`SKIPPED_WITH_ALL_UPSTREAM`)
    are added; one with another upstream task left (``register``, which also
    follows the first gate) is not.
    """
    result = set(skipped)
    grown = True
    while grown:
        grown = False
        for task in dag.tasks:
            if task.task_id in result or not task.upstream_task_ids:
                continue
            if task.trigger_rule in SKIPPED_WITH_ALL_UPSTREAM and task.upstream_task_ids <= result:
                result.add(task.task_id)
                grown = True
    return result


def run_type(dag_run: Any) -> str:
    """The run type as its plain value (``"backfill"``, ``"manual"``, ...).

    The Task SDK gives a ``str`` enum, whose ``str()`` is ``"DagRunType.BACKFILL"``.
    """
    value = dag_run.run_type
    return str(getattr(value, "value", value))


def is_deploying_run(context: Context) -> tuple[bool, str]:
    """Whether this run may register and move a label, and why not."""
    if run_type(context["dag_run"]) == BACKFILL_RUN_TYPE:
        return False, "backfill runs never deploy (they record model quality only)"
    if context["params"].get("skip_deploy"):
        return False, "the run was triggered with skip_deploy"
    return True, ""


def accepted_candidate(context: Context) -> dict[str, Any]:
    """The candidate a gate accepted (``gate_optimized``'s first), with its ``fingerprint`` for the lineage.

    The fingerprint is the train step's; after the optimize branch it is marked
    as that branch's (another model, from the same inputs), so that no later
    train candidate is taken for it.
    """
    ti = context["ti"]
    for gate_task in (OPTIMIZED_GATE, FIRST_GATE):
        candidate = ti.xcom_pull(task_ids=gate_task, key="candidate")
        if candidate:
            fingerprint = (ti.xcom_pull(task_ids=TRAIN_TASK) or {}).get("fingerprint")
            if gate_task == OPTIMIZED_GATE:
                fingerprint = for_stage(fingerprint, OPTIMIZE_STAGE)
            return {**candidate, "fingerprint": fingerprint}
    raise RuntimeError("no gate accepted a candidate, so there is nothing to register")


class GateOperator(BaseBranchOperator):
    """Apply the gate to one evaluation and branch to the route :func:`include.mlops.evaluation.gate.route` picks.

    Writes ``decision.json`` and ``decision.md`` to the task's run folder and
    pushes XCom ``decision`` (route, outcome, failed budgets: what optimize
    needs) and, when the route is ``register``, ``candidate``.  The gate fails
    closed: a champion that evaluate could not score fails the task without
    retrying (AirflowFailException, the gate's exit 3), unless the run was
    triggered with ``accept_without_champion``.  With ``train_task_id`` (the
    first gate) a passing candidate whose fingerprint (that task's result) is
    the champion's routes to ``identical`` (the ``skip_deploy`` task), even
    when forced: nothing is registered and no label moves.  A classic
    operator rather than ``@task.branch``: the decorator's machinery costs more
    parse time per DAG than everything else in this operator.
    """

    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        config: ModelConfig,
        evaluate_task_id: str,
        on_fail: str,
        report_task_id: str | None = None,
        train_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        # The task whose result holds the candidate's fingerprint; None: no "identical to the champion" check.
        self.train_task_id = train_task_id
        self.evaluate_task_id = evaluate_task_id
        self.on_fail = on_fail
        # The task whose result names the optimization report (compress), recorded in decision.json.
        self.report_task_id = report_task_id

    def choose_branch(self, context: Context) -> str:
        config, task_id = self.config, self.task_id
        ti, params, dag_run = context["ti"], context["params"], context["dag_run"]
        evaluation: Mapping[str, Any] = ti.xcom_pull(task_ids=self.evaluate_task_id)
        champion = evaluation.get("champion") or None
        try:
            decision = gate_lib.decide_for_config(
                config,
                evaluation["metrics"],
                champion["metrics"] if champion else None,
                gate=run_gate_config(config, params),
                force=bool(params.get("force_deploy")),
                champion_unscored=evaluation.get("champion_unscored"),
                accept_without_champion=bool(params.get(gate_lib.ACCEPT_WITHOUT_CHAMPION)),
            )
        except gate_lib.GateError as exc:  # bad input (exit 3): a retry decides the same
            raise AirflowFailException(str(exc)) from None
        deploying, why_not = is_deploying_run(context)
        identical = self._identical_to_champion(context, champion)
        route = gate_lib.route(
            decision.passed, deploying=deploying, on_fail=self.on_fail, identical=identical is not None
        )
        not_registered = identical.message if identical is not None and route == "identical" else None
        out = run_dir(config.dag_id, dag_run.run_id, task_id)
        record = {
            "decision": decision.to_dict(),
            "route": route,
            "champion_version": champion.get("version") if champion else None,
            "champion_unavailable": evaluation.get("champion_unavailable"),
            "champion_unscored": decision.champion_unscored.to_dict() if decision.champion_unscored else None,
            "accepted_without_champion": decision.accepted_without_champion,
            "params": {k: params.get(k) for k in GATE_PARAMS},
            "deploying_run": deploying,
            "not_deploying_because": why_not or None,
            "identical_to_champion": identical.to_dict() if identical else None,
        }
        if self.report_task_id is not None:
            record["optimization_report"] = (ti.xcom_pull(task_ids=self.report_task_id) or {}).get("report_uri")
        atomic_write_json(out / "decision.json", record)
        headline = f"> **{not_registered}.**\n\n" if not_registered else ""
        atomic_write_text(out / "decision.md", f"# Gate `{task_id}`: {route}\n\n{headline}{decision.to_markdown()}\n")
        artifact_store.publish(out)
        for check in decision.checks:
            log.info("gate check: %s", check.message)
        if decision.override and not not_registered:
            log.warning(
                "force_deploy: the gate failed but the candidate is deployed as an override: %s", decision.reasons
            )
        ti.xcom_push(
            key="decision",
            value={
                "route": route,
                "passed": decision.passed,
                "failed_budgets": list(decision.failed_budgets),
                "decision_uri": str(out / "decision.json"),
                "identical_to_champion": not_registered,
            },
        )
        if not_registered:
            forced = " (force_deploy does not register it either: it is what already serves)"
            log.warning("%s%s", not_registered, forced if params.get("force_deploy") else "")
        if route == "register":
            ti.xcom_push(
                key="candidate",
                value={
                    "model_uri": evaluation["model_uri"],
                    "tflite_uri": evaluation.get("tflite_uri"),
                    "evaluation_uri": str(run_dir(config.dag_id, dag_run.run_id, self.evaluate_task_id)),
                    "decision_uri": str(out / "decision.json"),
                },
            )
        log.info(
            "gate %s -> %s%s", "passed" if decision.passed else "failed", route, f" ({why_not})" if why_not else ""
        )
        return ROUTE_TASKS.get(route, route)

    def skip_all_except(self, ti: Any, branch_task_ids: Any) -> None:
        """Skip the branches not taken, and at once everything downstream that only they lead to."""
        try:
            super().skip_all_except(ti, branch_task_ids)
        except DownstreamTasksSkipped as skipping:
            direct = [task if isinstance(task, tuple) else (task, -1) for task in skipping.tasks]
            further = skipped_with(self.dag, {task_id for task_id, _ in direct}) - {task_id for task_id, _ in direct}
            raise DownstreamTasksSkipped(tasks=[*direct, *((task_id, -1) for task_id in sorted(further))]) from None

    def _identical_to_champion(
        self, context: Context, champion: Mapping[str, Any] | None
    ) -> IdenticalToChampion | None:
        """Whether the train task's candidate has the champion's fingerprint (never without ``train_task_id``)."""
        if self.train_task_id is None or not champion:
            return None
        trained = context["ti"].xcom_pull(task_ids=self.train_task_id) or {}
        return identical_to_champion(trained.get("fingerprint"), champion)


class SkipDeployOperator(BaseOperator):
    """The end of a run that does not deploy (a backfill, ``skip_deploy``, nothing new): says why, changes nothing."""

    def execute(self, context: Context) -> str:
        outcome = context["ti"].xcom_pull(task_ids=FIRST_GATE, key="decision") or {}
        why = outcome.get("identical_to_champion") or is_deploying_run(context)[1]
        log.info(
            "Not deploying: %s. The evaluation reports are under %s",
            why,
            run_dir(self.dag_id, context["dag_run"].run_id, ""),
        )
        return why


class RejectOperator(BaseOperator):
    """The optimized candidate still failed the gate: write the report; ``stable`` keeps serving."""

    gate_task_id = OPTIMIZED_GATE

    def execute(self, context: Context) -> dict[str, Any]:
        run_id = context["dag_run"].run_id
        decision_file = run_dir(self.dag_id, run_id, self.gate_task_id) / "decision.json"
        artifact_store.fetch(decision_file.parent)
        record = read_json(decision_file)
        reasons = record["decision"].get("reasons", [])
        out = run_dir(self.dag_id, run_id, self.task_id)
        lines = [f"# Candidate rejected: DAG `{self.dag_id}`, run `{run_id}`", ""]
        lines += ["The optimized candidate still failed the gate, so the `stable` version keeps serving.", ""]
        lines += [f"- {reason}" for reason in reasons]
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
        artifact_store.publish(out)
        log.warning("Candidate rejected; stable is unchanged. Reasons: %s", "; ".join(reasons))
        return {"rejected": True, "reasons": reasons, "report_uri": str(out / "report.md")}
