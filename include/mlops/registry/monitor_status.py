"""What the Models view shows of a model's health: the outcome of its newest decided monitor run.

A monitor run (``plugins/mlops_airflow/monitoring.py``) writes under
``runs/monitor__<name>/<run>/``: ``slo/slo.json``
(:func:`include.mlops.monitoring.slo.measure_slo`), ``drift/drift.json``
(:func:`include.mlops.monitoring.drift.check_drift`), ``decide/outcome.json``
and ``decide/report.html`` (:mod:`include.mlops.monitoring.report`), and, when
drift led there, ``request_retrain/decision.json``
(:mod:`include.mlops.monitoring.retraining`).

The newest run is the one whose window ends last (``outcome.json``'s
``window_end``; the date in the folder name for runs that predate it); a run
whose ``decide`` has not written its outcome yet is skipped.  A file that is
not what its writer writes is reported as unreadable with its path, never
raised: the page shows what it can.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops.monitoring.report import REPORT_FILE, slo_checks
from include.mlops.monitoring.retraining import DRIFT_PERSISTS
from include.mlops.monitoring.slo import FIGURES
from include.mlops.registry.run_folders import FileCache, as_dict, folder_date

log = logging.getLogger(__name__)

DECIDE_TASK = "decide"
OUTCOME_FILE = "outcome.json"
SLO_FILE = ("slo", "slo.json")
DRIFT_FILE = ("drift", "drift.json")
RETRAIN_FILE = ("request_retrain", "decision.json")
# Every file the Models view reads in a monitor run folder (on an object store, only these are brought over).
VIEW_FILES = tuple(
    "/".join(parts) for parts in ((DECIDE_TASK, OUTCOME_FILE), (DECIDE_TASK, REPORT_FILE), SLO_FILE, DRIFT_FILE,
                                  RETRAIN_FILE)
)  # fmt: skip
NO_RUN, MEASURED, UNREADABLE = "no_run", "measured", "unreadable"
# What a drift.json feature entry contributes to the view (bins and shares stay in the report).
FEATURE_KEYS = ("test", "statistic", "p_value", "p_adjusted", "psi", "out_of_range", "drifted", "reason")
_OLDEST = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class MonitorHealth:
    """The newest decided monitor run of one model, reduced to what the page shows.

    ``state``: ``measured``, ``no_run`` (no run has decided yet) or ``unreadable``
    (its ``outcome.json`` is not one; ``problems`` names the path).  ``slo`` and
    ``drift`` each carry a ``state`` of their own: ``read``, ``missing`` or
    ``unreadable`` (with ``path``).
    """

    monitor_dag_id: str
    state: str
    run: dict[str, Any] | None = None  # {"folder", "run_id", "run_type", "date"}
    outcomes: list[str] = dataclasses.field(default_factory=list)
    window: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"start", "end", "minutes"}
    slo: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None  # request_retrain's {"action", "reason"}
    has_report: bool = False
    report_uri: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


class MonitorRuns:
    """The newest decided run under a monitor DAG's run folders, its files cached on their mtimes."""

    def __init__(self, files: FileCache) -> None:
        self._files = files

    def latest(self, folder: Path) -> MonitorHealth:
        """The health the newest decided run under ``folder`` (``runs/monitor__<name>``) records."""
        dag_id = folder.name
        newest: tuple[dt.datetime, str, Any] | None = None
        try:
            entries = [e for e in os.scandir(folder) if e.name[0] != "." and e.is_dir()]
        except OSError:  # no monitor run yet (or the folder went away)
            entries = []
        for entry in entries:
            path = os.path.join(entry.path, DECIDE_TASK, OUTCOME_FILE)
            record = self._files.json(path)
            if record is None and not os.path.isfile(path):
                continue  # decide has not written yet
            key = (_window_end(record) or _folder_time(entry.name), entry.name, record)
            if newest is None or key[:2] > newest[:2]:
                newest = key
        if newest is None:
            return MonitorHealth(dag_id, NO_RUN)
        return self._health(folder, newest[1], newest[2])

    def report(self, folder: Path, run: str) -> Path | None:
        """The report of ``run`` under ``folder``, when ``run`` is one of its run folders and has one."""
        known = {e.name for e in os.scandir(folder) if e.is_dir()} if folder.is_dir() else set()
        if run.startswith(".") or run not in known:
            return None
        path = folder / run / DECIDE_TASK / REPORT_FILE
        return path if path.is_file() else None

    def _health(self, folder: Path, run: str, record: Any) -> MonitorHealth:
        run_dir = folder / run
        run_type, date = folder_date(run)
        outcome_path = run_dir / DECIDE_TASK / OUTCOME_FILE
        about = {"folder": run, "run_id": None, "run_type": run_type, "date": date}
        outcomes = record.get("outcomes") if isinstance(record, Mapping) else None
        if not isinstance(record, Mapping) or not _outcome_list(outcomes):
            problem = f"{outcome_path} is unreadable: not JSON with a list of outcomes, as the decide task writes"
            log.warning("Models view: %s", problem)
            return MonitorHealth(folder.name, UNREADABLE, run=about, problems=[problem])
        if isinstance(record.get("run_id"), str):
            about["run_id"] = record["run_id"]
        slo = self._part(run_dir.joinpath(*SLO_FILE), _slo_section)
        drift = self._part(run_dir.joinpath(*DRIFT_FILE), _drift_section)
        retrain = self._files.json(str(run_dir.joinpath(*RETRAIN_FILE)))
        retrain = (
            {"action": retrain.get("action"), "reason": retrain.get("reason")} if isinstance(retrain, Mapping) else None
        )
        problems = [f"{part['path']} is unreadable" for part in (slo, drift) if part["state"] == UNREADABLE]
        return MonitorHealth(
            monitor_dag_id=folder.name,
            state=MEASURED,
            run=about,
            outcomes=[*outcomes, *([DRIFT_PERSISTS] if retrain and retrain["action"] == DRIFT_PERSISTS else [])],
            window=_window(record, slo, drift),
            slo=slo,
            drift=drift,
            retrain=retrain,
            has_report=(run_dir / DECIDE_TASK / REPORT_FILE).is_file(),
            report_uri=record.get("report_uri") if isinstance(record.get("report_uri"), str) else None,
            problems=problems,
        )

    def _part(self, path: Path, section: Any) -> dict[str, Any]:
        """One measurement's file as its section of the page: read, missing (its task did not write) or unreadable."""
        data = self._files.json(str(path))
        if data is None and not path.is_file():
            return {"state": "missing", "path": str(path)}
        try:
            if not isinstance(data, Mapping):
                raise TypeError("not a JSON object")
            return {"state": "read", "path": str(path), **section(data)}
        except (TypeError, ValueError, AttributeError) as exc:  # a file another writer (or a disk) mangled
            log.warning("Models view: %s is unreadable (%s)", path, exc)
            return {"state": UNREADABLE, "path": str(path)}


def _slo_section(slo: Mapping[str, Any]) -> dict[str, Any]:
    problems = [str(p) for p in slo.get("problems") or []]
    rows = []
    # In measure_slo's order (the JSON file's keys are sorted), any other figure after them.
    order = {figure: index for index, figure in enumerate(FIGURES)}
    for check in sorted(slo_checks(slo), key=lambda c: (order.get(c["figure"], len(order)), str(c["figure"]))):
        # measure_slo names each figure's problem "<figure>: ..."; unmeasured() has one for them all.
        own = [p for p in problems if p.startswith(f"{check['figure']}: ")]
        reason = own[0] if own else (problems[0] if problems and check["value"] is None else None)
        rows.append({**check, "reason": reason})
    return {
        "status": slo.get("status"),
        "rows": rows,
        "breaches": [str(b) for b in slo.get("breaches") or []],
        "problems": problems,
        "window_minutes": slo.get("window_minutes"),
    }


def _drift_section(drift: Mapping[str, Any]) -> dict[str, Any]:
    entries = drift.get("features") or {}
    features = [
        {"name": str(name), **{key: entry.get(key) for key in FEATURE_KEYS}}
        for name, entry in entries.items()
        if isinstance(entry, Mapping)
    ]
    # Drifted first, then the strongest evidence (smallest adjusted p, then largest PSI), as the report lists them.
    features.sort(key=lambda f: (not f["drifted"], _number(f["p_adjusted"], 2.0), -_number(f["psi"], 0.0)))
    return {
        "status": drift.get("status"),
        "drifted": bool(drift.get("drifted")),
        "rows": drift.get("rows"),
        "score": drift.get("score"),
        "false_alarm_rate": drift.get("false_alarm_rate"),
        "threshold": drift.get("threshold"),
        "primary_version": drift.get("primary_version"),
        "features": features,
        "problems": [str(p) for p in drift.get("problems") or []],
        "failed_expectations": [str(f) for f in drift.get("failed_expectations") or []],
        "window_start": drift.get("window_start"),
        "window_end": drift.get("window_end"),
    }


def _window(record: Mapping[str, Any], slo: Mapping[str, Any], drift: Mapping[str, Any]) -> dict[str, Any]:
    """The measured window: the decide task's record, else the drift result's (runs that predate it)."""
    start = record.get("window_start") or drift.get("window_start")
    end = record.get("window_end") or drift.get("window_end")
    minutes = slo.get("window_minutes")
    if minutes is None and _parse(start) and _parse(end):
        minutes = round((_parse(end) - _parse(start)).total_seconds() / 60)  # type: ignore[operator]
    return {"start": start, "end": end, "minutes": minutes}


def _outcome_list(outcomes: Any) -> bool:
    return isinstance(outcomes, list) and bool(outcomes) and all(isinstance(o, str) for o in outcomes)


def _window_end(record: Any) -> dt.datetime | None:
    return _parse(record.get("window_end")) if isinstance(record, Mapping) else None


def _folder_time(folder: str) -> dt.datetime:
    return _parse(folder_date(folder)[1]) or _OLDEST


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.astimezone(dt.UTC) if at.tzinfo else at.replace(tzinfo=dt.UTC)


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
