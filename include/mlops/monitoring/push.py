"""Push a drift check's scores to a Prometheus Pushgateway (job ``mlops_drift``, grouped by model).

The metric names are the monitoring contract's; the dashboards and alert rules
read them.  Each push replaces the model's whole group, so a feature or a
version that is no longer scored does not linger with an old value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

JOB = "mlops_drift"
PUSH_TIMEOUT_S = 10.0


class PushError(RuntimeError):
    """The Pushgateway could not take the scores (unreachable, or it answered with an error)."""


def drift_metrics(model_name: str, result: Mapping[str, Any], checked_at: float) -> Any:
    """A ``CollectorRegistry`` holding the contract's drift metrics for one check result."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    score = Gauge(
        "mlops_drift_score", "Overall input drift (max feature PSI) per served version", ["model_name", "version"],
        registry=registry,
    )  # fmt: skip
    feature_score = Gauge(
        "mlops_drift_feature_score", "Population stability index of one feature against the training reference",
        ["model_name", "version", "feature"], registry=registry,
    )  # fmt: skip
    threshold = Gauge(
        "mlops_drift_threshold", "PSI above which a feature has drifted", ["model_name"], registry=registry
    )
    rows = Gauge("mlops_drift_rows", "Logged requests the last check scored", ["model_name"], registry=registry)
    last = Gauge(
        "mlops_drift_last_check_timestamp_seconds", "When the last drift check ran (Unix time)", ["model_name"],
        registry=registry,
    )  # fmt: skip
    # Pushed by every check, 0 when the window did not drift (or had too few rows): the drift alert
    # resolves when drift ends, instead of firing on the last drifted window's scores.
    detected = Gauge(
        "mlops_drift_detected", "1 when the last drift check found drift (the tests' verdict), else 0", ["model_name"],
        registry=registry,
    )  # fmt: skip
    detected.labels(model_name).set(1.0 if result.get("status") == "ok" and result.get("drifted") else 0.0)
    threshold.labels(model_name).set(float(result["threshold"]))
    rows.labels(model_name).set(float(result["rows"]))
    last.labels(model_name).set(checked_at)
    for version, scored in (result.get("per_version") or {}).items():
        if scored.get("score") is not None:
            score.labels(model_name, str(version)).set(float(scored["score"]))
        for feature, psi in (scored.get("psi") or {}).items():
            if psi is not None:
                feature_score.labels(model_name, str(version), feature).set(float(psi))
    return registry


def push_drift(pushgateway_url: str, model_name: str, result: Mapping[str, Any], checked_at: float) -> None:
    """Replace the model's group on the Pushgateway with this result's metrics; raises :class:`PushError`."""
    from prometheus_client import push_to_gateway

    registry = drift_metrics(model_name, result, checked_at)
    try:
        push_to_gateway(
            pushgateway_url, job=JOB, registry=registry, grouping_key={"model_name": model_name}, timeout=PUSH_TIMEOUT_S
        )
    except Exception as exc:  # URLError, HTTPError, OSError, ValueError for a malformed URL
        raise PushError(f"could not push drift scores to the Pushgateway at {pushgateway_url}: {exc}") from exc
    log.info("pushed drift scores of %s to %s (job %s)", model_name, pushgateway_url, JOB)
