"""What the Models view reads from run folders: each run's final gate decision, what it registered and deployed.

Runs write under ``runs/<dag_id>/<run_id>/<step>/``; this reads only the small
files there (the gate tasks' ``decision.json``, the register and deploy steps'
``result.json``) and keeps what it parsed keyed on each file's mtime and size,
so a page over 1,000 runs re-reads only what changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The gate tasks of the lifecycle DAG, last first: a run's final decision is the last one that ran.
GATE_TASKS = ("gate_optimized", "gate")
REPORT_STEPS = ("evaluate", "evaluate_optimized")
REPORT_FILE = "report.html"
RESULT_STEPS = ("register", "deploy")
# The train step's and the tune_select step's records (include.mlops.registry.compare reads them).
TRAIN_RECORD = "train/history.json"
TUNE_RECORD = "tune_select/trials.json"
# Every file the Models view reads in a lifecycle run folder (on an object store, only these are brought over).
VIEW_FILES = (
    *(f"{task}/decision.json" for task in GATE_TASKS),
    *(f"{step}/result.json" for step in RESULT_STEPS),
    *(f"{step}/{REPORT_FILE}" for step in REPORT_STEPS),
    TRAIN_RECORD,
    TUNE_RECORD,
)
_RUN_FOLDER = re.compile(
    r"^(?P<type>[a-z_]+?)__(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<h>\d{2})_(?P<m>\d{2})_(?P<s>\d{2}))?"
)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One gate decision, reduced to what the page shows."""

    task_id: str
    passed: bool
    override: bool
    reasons: list[str]
    route: str | None
    metrics: dict[str, float | None]
    bounds: dict[str, dict[str, float | None]]

    def to_dict(self) -> dict[str, Any]:
        return {**as_dict(self), "outcome": self.outcome}

    @property
    def outcome(self) -> str:
        if self.override:
            return "passed by override"
        return "passed" if self.passed else "failed"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run folder of a lifecycle DAG: its final gate decision, what it registered and deployed."""

    folder: str
    run_type: str
    date: str | None
    decision: Decision | None
    registered_version: int | None
    deployed: dict[str, Any] | None
    reports: list[str]
    mtime: float

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


class FileCache:
    """Parsed files keyed on (mtime_ns, size): a file that changed is parsed again, others are not."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int, Any]] = {}
        self._lock = threading.Lock()

    def json(self, path: str) -> Any | None:
        """The parsed JSON at ``path``, or None when it is missing or not JSON (logged)."""
        # Plain strings, not pathlib: with 1,000 runs, building Path objects cost more than the reads.
        try:
            info = os.stat(path)
        except OSError:
            return None
        key = (info.st_mtime_ns, info.st_size)
        cached = self._entries.get(path)
        if cached is not None and cached[:2] == key:
            return cached[2]
        try:
            with open(path, "rb") as handle:
                value = json.loads(handle.read())
        except (OSError, ValueError) as exc:
            log.warning("Models view: skipping %s (%s)", path, exc)
            value = None
        with self._lock:
            self._entries[path] = (*key, value)
        return value


class RunHistory:
    """Records of run folders, each rebuilt only when its folder or a gate decision in it changed."""

    def __init__(self, files: FileCache) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[list[int], RunRecord]] = {}

    def records(self, folder: Path) -> list[RunRecord]:
        """Every run folder under ``folder``, oldest first (by run date, then folder name)."""
        if not folder.is_dir():
            return []
        records = [self._run(entry) for entry in os.scandir(folder) if entry.is_dir() and entry.name[0] != "."]
        return sorted(records, key=lambda r: (r.date or "", r.folder))

    def _run(self, entry: os.DirEntry[str]) -> RunRecord:
        """One run folder's record, rebuilt only when the folder or a gate decision in it changed.

        Steps swap their whole output folder in with renames (the run folder's mtime
        changes); the gate tasks replace decision.json inside their own folder.
        """
        path = entry.path
        signature = [entry.stat().st_mtime_ns]
        for task_id in GATE_TASKS:
            try:
                info = os.stat(os.path.join(path, task_id, "decision.json"))
                signature += [info.st_mtime_ns, info.st_size]
            except OSError:
                signature += [0, 0]
        cached = self._runs.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        record = self._read_run(entry)
        with self._lock:
            self._runs[path] = (signature, record)
        return record

    def _read_run(self, entry: os.DirEntry[str]) -> RunRecord:
        path = entry.path
        steps = {e.name for e in os.scandir(path) if e.is_dir()}
        decision = None
        for task_id in GATE_TASKS:
            if task_id in steps:
                record = self._files.json(os.path.join(path, task_id, "decision.json"))
                if isinstance(record, Mapping) and isinstance(record.get("decision"), Mapping):
                    decision = parse_decision(task_id, record["decision"], record.get("route"))
                    break
        register, deploy = RESULT_STEPS
        result = os.path.join(path, register, "result.json")
        registered = self._files.json(result) if register in steps else None
        result = os.path.join(path, deploy, "result.json")
        deployed = self._files.json(result) if deploy in steps else None
        if isinstance(deployed, Mapping):
            # When the label moved: the deploy step writes its result.json right after moving it.
            moved = dt.datetime.fromtimestamp(os.stat(result).st_mtime, dt.UTC)
            deployed = {**deployed, "deployed_at": moved.isoformat(timespec="seconds")}
        run_type, date = folder_date(entry.name)
        return RunRecord(
            folder=entry.name,
            run_type=run_type,
            date=date,
            decision=decision,
            registered_version=registered.get("version") if isinstance(registered, Mapping) else None,
            deployed=dict(deployed) if isinstance(deployed, Mapping) else None,
            reports=[s for s in REPORT_STEPS if s in steps and os.path.isfile(os.path.join(path, s, REPORT_FILE))],
            mtime=entry.stat().st_mtime,
        )


def folder_date(folder: str) -> tuple[str, str | None]:
    """A run folder's run type and the date in its name (ISO 8601, UTC), as the run id gave them."""
    match = _RUN_FOLDER.match(folder)
    if not match:
        return "unknown", None
    # Run ids carry UTC times (Airflow writes them with +00:00, which the folder name lost).
    time = f"T{match['h']}:{match['m']}:{match['s']}" if match["h"] else "T00:00:00"
    return match["type"], f"{match['date']}{time}+00:00"


def as_dict(record: Any) -> dict[str, Any]:
    """A record as a dict for JSON and templates, sharing its values (dataclasses.asdict deep-copies: 10x slower)."""
    out = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        out[field.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def parse_decision(task_id: str, data: Mapping[str, Any], route: str | None) -> Decision:
    checks = [c for c in data.get("checks") or [] if isinstance(c, Mapping)]
    metrics: dict[str, float | None] = {}
    bounds: dict[str, dict[str, float | None]] = {}
    for check in checks:
        metric = str(check.get("metric"))
        metrics.setdefault(metric, check.get("value"))
        if check.get("kind") in ("threshold", "budget") and check.get("bound") is not None:
            side = "min" if check.get("comparison") == ">=" else "max"
            bounds.setdefault(metric, {})[side] = check.get("bound")
    return Decision(
        task_id=task_id,
        passed=bool(data.get("passed")),
        override=bool(data.get("override")),
        reasons=[str(r) for r in data.get("reasons") or []],
        route=route,
        metrics=metrics,
        bounds=bounds,
    )
