"""Who may see a model: Airflow's own authentication, and read access to the model's lifecycle DAG.

The user comes from Airflow's ``get_user`` dependency (the ``Authorization:
Bearer`` token from ``POST /auth/token``, or the ``_token`` cookie the UI holds
after login), and the decision from the configured auth manager, exactly as
Airflow's own ``GET /api/v2/dags/{dag_id}`` decides it.
"""

from __future__ import annotations

import logging

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.models.dag import DagModel
from fastapi import HTTPException, status

log = logging.getLogger(__name__)


def may_read_dag(user: BaseUser, dag_id: str) -> bool:
    """Whether ``user`` may read ``dag_id`` under the configured auth manager."""
    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return get_auth_manager().is_authorized_dag(method="GET", details=details, user=user)


def require_dag_read(user: BaseUser, dag_id: str) -> None:
    """403 unless ``user`` may read ``dag_id``."""
    if not may_read_dag(user, dag_id):
        log.info("Models view: %s may not read %s", user.get_name(), dag_id)
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"you may not read the DAG {dag_id}, so you cannot see its model; ask an Airflow admin for access",
        )
