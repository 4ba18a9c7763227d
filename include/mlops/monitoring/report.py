"""The monitoring run's ``report.html``: outcome, SLO figures against objectives, drift per feature, problems.

Rendered from ``templates/monitor_report.html`` (Jinja2, autoescaped) with
matplotlib (Agg) PNGs written beside it and embedded, so the file reads on its
own: the reference vs current bin shares of each drifting feature, and the
SLO figures against their objectives.  Every input may be partial: ``slo`` or
``drift`` is None when its task failed, and the report says so.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.evaluation.reports import render

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
NO_VALUE = "\N{EN DASH}"
# Beyond this many drifting features the table still lists them all; only the plots stop.
MAX_FEATURE_PLOTS = 12
# SLO figure -> the objective it is held to (objective key in the slo dict, and whether it is an upper bound).
SLO_OBJECTIVES: dict[str, tuple[str, str]] = {
    "error_ratio": ("max_error_ratio", "at most"),
    "p95_ms": ("p95_latency_ms", "at most"),
    "p99_ms": ("p99_latency_ms", "at most"),
    "requests": ("min_requests", "at least"),
}


def _number(value: Any) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, float):
        return NO_VALUE if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@contextlib.contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib (Agg) axes whose figure is saved to ``path`` as PNG, and always closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=90)
    try:
        yield ax
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _feature_plot(feature: str, entry: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    edges = entry["bin_edges"]
    if edges:
        labels = [f"< {edges[0]:.3g}"] + [f"[{a:.3g}, {b:.3g})" for a, b in itertools.pairwise(edges)]
        labels.append(f">= {edges[-1]:.3g}")
    else:
        labels = ["every value"]  # a feature constant in training has one bin
    positions = np.arange(len(labels))
    with _figure(path, (7, 3.2)) as ax:
        ax.bar(positions - 0.2, entry["reference_weights"], width=0.4, label="training reference")
        if entry.get("current_weights") is not None:
            ax.bar(positions + 0.2, entry["current_weights"], width=0.4, label="window")
        ax.set_xticks(positions, labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share of rows")
        psi = entry.get("psi")
        test = f", {entry['test']} adjusted p {_number(entry['p_adjusted'])}" if entry.get("test") else ""
        ax.set_title(f"{feature}: PSI {_number(psi)}{test}", fontsize=9)
    return path


def slo_checks(slo: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each SLO figure with the objective it is held to and whether it met it (None: no value, or no objective).

    ``{"figure", "value", "objective_key", "direction", "objective", "met"}`` per figure of ``slo["figures"]``,
    ``direction`` being "at most" or "at least"; the report and the Models view both show these.
    """
    figures, objectives = slo.get("figures") or {}, slo.get("slo") or {}
    checks = []
    for figure, value in figures.items():
        key, direction = SLO_OBJECTIVES.get(figure, ("", ""))
        objective = objectives.get(key)
        met = None
        if isinstance(objective, int | float) and isinstance(value, int | float):
            met = value <= objective if direction == "at most" else value >= objective
        checks.append(
            {
                "figure": figure,
                "value": value,
                "objective_key": key or None,
                "direction": direction or None,
                "objective": objective,
                "met": met,
            }
        )
    return checks


def _slo_rows(slo: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "figure": check["figure"],
            "value": _number(check["value"]),
            "objective": f"{check['direction']} {_number(check['objective'])}"
            if check["objective"] is not None
            else NO_VALUE,
            "met": check["met"],
        }
        for check in slo_checks(slo)
    ]


def _slo_plot(rows: Sequence[Mapping[str, Any]], slo: Mapping[str, Any], path: Path) -> Path | None:
    """Each figure as a share of its objective (1.0 = exactly on the objective)."""
    figures, objectives = slo.get("figures") or {}, slo.get("slo") or {}
    shares = {}
    for row in rows:
        key = SLO_OBJECTIVES.get(row["figure"], ("", ""))[0]
        value, objective = figures.get(row["figure"]), objectives.get(key)
        if value is not None and objective:
            shares[row["figure"]] = value / objective
    if not shares:
        return None
    with _figure(path, (6, 2.8)) as ax:
        ax.barh(list(shares), list(shares.values()), color="#4c72b0")
        ax.axvline(1.0, color="#cf222e", linestyle="--", label="objective")
        ax.set_xlabel("figure / objective")
    return path


def write_report(
    config: ModelConfig,
    slo: Mapping[str, Any] | None,
    drift: Mapping[str, Any] | None,
    outcome: Sequence[str],
    out: str | os.PathLike[str],
) -> Path:
    """Write ``out/report.html`` (and its PNGs) for one monitoring run; returns the report's path.

    ``drift`` may be the step's summary: the bins and shares to plot are read
    back from its ``drift.json`` (``result_uri``).
    """
    from include.mlops.monitoring.drift import full_result

    drift = full_result(drift) if drift is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    if slo is None:
        problems.append("the SLO measurement did not run or failed: no serving figures for this window")
    else:
        problems += [f"SLO: {p}" for p in slo.get("problems") or []]
    if drift is None:
        problems.append("the drift check did not run or failed: no drift scores for this window")
    else:
        problems += [f"drift: {p}" for p in drift.get("problems") or []]

    slo_rows = _slo_rows(slo) if slo is not None else []
    slo_png = _slo_plot(slo_rows, slo, out / "slo.png") if slo is not None else None
    features: list[dict[str, Any]] = []
    plots: list[dict[str, str]] = []
    if drift is not None:
        entries = sorted(
            (drift.get("features") or {}).items(),
            key=lambda item: (not item[1].get("drifted"), -(item[1].get("psi") or 0.0)),
        )
        for feature, entry in entries:
            features.append(
                {"test": None, "p_adjusted": None, **entry, "name": feature, "psi": _number(entry.get("psi"))}
            )
            if entry.get("drifted") and entry.get("bin_edges") and len(plots) < MAX_FEATURE_PLOTS:
                path = _feature_plot(feature, entry, out / f"drift_{artifacts.safe_segment(feature)}.png")
                plots.append({"feature": feature, "file": path.name, "base64": _png(path)})
    html = render(
        "monitor_report.html",
        config=config,
        outcome=list(outcome),
        slo=slo,
        slo_rows=slo_rows,
        slo_plot=_png(slo_png) if slo_png is not None else None,
        drift=drift,
        features=features,
        plots=plots,
        more_drifting=sum(1 for f in features if f.get("drifted")) - len(plots),
        problems=problems,
        number=_number,
    )
    path = artifacts.atomic_write_text(out / REPORT_FILE, html)
    log.info("monitoring report of %s: %s (outcome %s, %d problems)", config.name, path, outcome, len(problems))
    return path
