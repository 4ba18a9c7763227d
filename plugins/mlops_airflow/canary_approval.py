"""The approval before a canary's promotion: Airflow's ``ApprovalOperator``, keeping who answered what.

Its answer is pushed as XCom ``decision`` (``chosen_options``, ``responded_by_user``) before the operator
skips ``promote`` on Reject, so that the end of the canary records why and who in the audit log.  The
operator's own return value is not relied on: Airflow 3.3 does not push it when a task resumes from
``awaiting_input``.  Imported only by DAGs whose model config asks for an approval.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Context

DECISION_KEY = "decision"


class CanaryApprovalOperator(ApprovalOperator):
    """Approve or Reject the promotion; Reject when nobody answers within the timeout (the default)."""

    ui_color = "#fff3d6"

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        decision = {"chosen_options": event.get("chosen_options"), "responded_by_user": event.get("responded_by_user")}
        context["ti"].xcom_push(key=DECISION_KEY, value=decision)
        return super().execute_complete(context, event)
