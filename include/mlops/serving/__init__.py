"""The local model server: an embedded stand-in for TensorFlow Serving.

``python -m include.mlops.serving --registry PATH --port 8501`` serves the
registry folder (TF Serving's model base path) and its ``models.config`` with
TF Serving's REST API, version policy, labels and Prometheus metric names,
picking up label changes without a restart.  See ``docs/serving.md``.

Nothing heavy is imported here: TensorFlow loads with the first model.
"""

from __future__ import annotations
