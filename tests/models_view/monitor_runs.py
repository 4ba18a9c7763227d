"""Monitor run folders as ``monitor__<name>`` writes them, for the Models view's Health section.

The SLO results come from the real :func:`~include.mlops.monitoring.slo.measure_slo`
against a Prometheus stand-in (``httpx.MockTransport``), or its
:func:`~include.mlops.monitoring.slo.unmeasured` when Prometheus cannot be
reached, as the ``slo`` task records it; the outcomes from the real
:func:`~include.mlops.monitoring.outcome.decide`, the report from the real
:func:`~include.mlops.monitoring.report.write_report`, and the retraining
decision from :func:`~include.mlops.monitoring.retraining.decide_retrain`.
The drift result is a ``drift.json`` with every key
:func:`~include.mlops.monitoring.drift.check_drift` writes (running it needs
a registered reference, a prediction log and Great Expectations).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.monitoring import outcome as outcome_lib
from include.mlops.monitoring import retraining
from include.mlops.monitoring.report import write_report
from include.mlops.monitoring.slo import PrometheusUnavailableError, measure_slo, slo_queries, unmeasured

HEALTHY_FIGURES = {"requests": 540.0, "request_rate": 0.15, "error_ratio": 0.002, "p95_ms": 42.0, "p99_ms": 88.0}


def prometheus(config: ModelConfig, figures: Mapping[str, float] | None) -> httpx.Client:
    """A Prometheus that answers each SLO query with its figure (``None``: one that cannot be reached)."""
    by_query = (
        {q: figures[f] for f, q in slo_queries(config.serving_name, config.monitor.window_minutes).items()}
        if figures
        else {}
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if figures is None:
            raise httpx.ConnectError("connection refused", request=request)
        value = by_query[request.url.params["query"]]
        sample = [{"metric": {}, "value": [float(request.url.params["time"]), str(value)]}]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": sample}})

    return httpx.Client(transport=httpx.MockTransport(answer))


def slo_result(config: ModelConfig, end: dt.datetime, figures: Mapping[str, float] | None) -> dict[str, Any]:
    """What the ``slo`` task records: measured, or ``insufficient_data`` when Prometheus is down."""
    with prometheus(config, figures) as client:
        try:
            return measure_slo("http://prometheus.invalid:9090", config, end=end, client=client)
        except PrometheusUnavailableError as exc:
            return unmeasured(config, f"SLOs not measured: {exc}")


def drift_result(
    config: ModelConfig, start: dt.datetime, end: dt.datetime, drifted: Mapping[str, float], out: Path
) -> dict[str, Any]:
    """A ``check_drift`` result over 400 rows of version 1; each feature in ``drifted`` gets that adjusted p-value."""
    features: dict[str, Any] = {}
    for index, name in enumerate(config.features):
        p_adjusted = drifted.get(name, 0.9)
        is_drifted = name in drifted
        features[name] = {
            "psi": 0.41 if is_drifted else 0.01 + index / 1000,
            "out_of_range": 0.125 if is_drifted else 0.0,
            "drifted": is_drifted,
            "reason": f"ks statistic 0.31, Holm-adjusted p {p_adjusted:.2g} <= false_alarm_rate 0.01 (version 1)"
            if is_drifted
            else None,
            "test": "ks",
            "statistic": 0.31 if is_drifted else 0.04,
            "p_value": p_adjusted / 10,
            "p_adjusted": p_adjusted,
            "kind": "numeric",
            "bin_edges": [-0.05, 0.0, 0.05],
            "reference_weights": [0.25, 0.25, 0.25, 0.25],
            "current_weights": [0.1, 0.2, 0.3, 0.4] if is_drifted else [0.25, 0.25, 0.25, 0.25],
            "reference_mean": 0.0,
            "current_mean": 0.04 if is_drifted else 0.0,
            "reference_range": [-0.1, 0.1],
            "current_range": [-0.1, 0.2 if is_drifted else 0.1],
        }
    drift = config.monitor.drift
    return {
        "status": "ok",
        "drifted": bool(drifted),
        "score": max(f["psi"] for f in features.values()),
        "threshold": drift.psi_threshold,
        "false_alarm_rate": drift.false_alarm_rate,
        "rows": 400,
        "features": features,
        "failed_expectations": [],
        "problems": [],
        "versions": {"1": 400},
        "per_version": {},
        "pushed": False,
        "result_uri": str((out / "drift.json").resolve()),
        "validation_uri": None,
        "model_name": config.serving_name,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "primary_version": 1,
        "validated_rows": 400,
        "validation_sampled": False,
    }


def write_monitor_run(
    root: Path,
    config: ModelConfig,
    run_id: str,
    end: dt.datetime,
    *,
    figures: Mapping[str, float] | None = HEALTHY_FIGURES,
    drifted: Mapping[str, float] | None = None,
    retrain_requests: int = 0,
) -> Path:
    """One decided monitor run of ``config`` for the window ending at ``end``; returns the run folder.

    ``retrain_requests`` earlier requests in this drift episode: at ``monitor.max_retrains`` a drifted window
    is ``drift_persists``.
    """
    dag_id = config.monitor_dag_id
    start = end - config.monitor.window
    slo = slo_result(config, end, figures)
    slo["result_uri"] = str(
        artifacts.atomic_write_json(artifacts.run_dir(dag_id, run_id, "slo", root=root) / "slo.json", slo)
    )
    drift_out = artifacts.run_dir(dag_id, run_id, "drift", root=root)
    drift = drift_result(config, start, end, drifted or {}, drift_out)
    artifacts.atomic_write_json(drift_out / "drift.json", drift)
    outcomes = outcome_lib.decide(slo, drift)
    decide_out = artifacts.run_dir(dag_id, run_id, "decide", root=root)
    report = write_report(config, slo, drift, outcomes, decide_out)
    record = {
        "outcomes": outcomes,
        "run_id": run_id,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "report_uri": str(report),
        "slo_uri": slo["result_uri"],
        "drift_uri": drift["result_uri"],
    }
    artifacts.atomic_write_json(decide_out / "outcome.json", record)
    if outcome_lib.DRIFT in outcomes:
        window = retraining.window_record(drift, run_id=run_id, window_end=end)
        earlier = [
            {
                "requested_at": (end - i * config.monitor.cooldown).isoformat(),
                "kind": "retrain",
                "monitor_run_id": f"r{i}",
            }
            for i in range(1, retrain_requests + 1)
        ]
        persistence = config.monitor.drift.persistence
        decision = retraining.decide_retrain(
            window=window,
            history=[{**window, "window_end": (end - config.monitor.window).isoformat()}],
            requests=earlier,
            run_id=run_id,
            backfill=False,
            k=persistence.k,
            n=persistence.n,
            period=config.monitor.cooldown,
            max_retrains=config.monitor.max_retrains,
        )
        out = artifacts.run_dir(dag_id, run_id, "request_retrain", root=root)
        artifacts.atomic_write_json(out / "decision.json", {"window": window, **decision.to_dict()})
    return decide_out.parent
