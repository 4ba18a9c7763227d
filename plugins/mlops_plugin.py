"""The project's Airflow plugin: the Models view (a FastAPI app under /mlops) and its places in the UI.

The app is built only when the API server asks for ``fastapi_apps``: every other
Airflow process that loads plugins (DAG processor, workers) imports just this file.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlparse

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/mlops"


def _ui_root() -> str:
    return urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


@functools.cache
def _models_view() -> Any:
    from mlops_airflow.models_view.app import create_app

    return create_app()


class MlopsPlugin(AirflowPlugin):
    name = "mlops"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": _models_view(), "url_prefix": URL_PREFIX, "name": "Models view"}]

    @property
    def external_views(self) -> list[dict[str, Any]]:  # type: ignore[override]
        models = f"{_ui_root()}{URL_PREFIX}/models"
        return [
            # Shown inside the UI (an iframe at /plugin/models), which sends the login's _token cookie.
            {"name": "Models", "href": models, "destination": "nav", "url_route": "models", "nav_top_level": True},
            # The UI offers a DAG tab on every DAG; by-dag/ sends lifecycle__<name> to its model, others to a 404.
            {"name": "Model", "href": f"{models}/by-dag/{{DAG_ID}}", "destination": "dag", "url_route": "model"},
        ]
