"""The local model server: an embedded stand-in for TensorFlow Serving.

``python -m include.mlops.serving --registry PATH --port 8501`` serves the
registry folder (TF Serving's model base path) and its ``models.config`` with
TF Serving's REST API, version policy, labels and Prometheus metric names,
picking up label changes without a restart.  See ``docs/serving.md``.

Nothing heavy is imported here: TensorFlow loads with the first model.
"""

from __future__ import annotations

__all__ = ["ModelManager", "ModelServer", "PredictionLogger", "ServerSettings", "ServingMetrics", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so that importing the package (e.g. for its settings) stays cheap.
    if name in ("ModelServer", "ServerSettings", "create_app"):
        from include.mlops.serving import app

        return getattr(app, name)
    if name == "ModelManager":
        from include.mlops.serving.models import ModelManager

        return ModelManager
    if name == "PredictionLogger":
        from include.mlops.serving.predlog import PredictionLogger

        return PredictionLogger
    if name == "ServingMetrics":
        from include.mlops.serving.metrics import ServingMetrics

        return ServingMetrics
    raise AttributeError(name)
