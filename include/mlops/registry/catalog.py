"""What the Models view shows: models, versions, gate decisions and the quality history, read from files.

Read-only and cheap: it reads only small metadata files (the registry's
``models.config`` and ``assets.extra/*.json``, the run folders' gate
``decision.json``, register and deploy ``result.json``), never model weights
or datasets, and keeps what it parsed keyed on each file's mtime and size, so
a page for 200 versions and 1,000 runs re-reads only what changed.

Every lookup by name, version or run folder is checked against what exists
(the model configs, the registry's version folders, the run folders) before a
path is built from it: a URL cannot name a file outside those.

No Airflow imports: the Airflow glue (``plugins/mlops_airflow/models_view``)
adds what only Airflow knows (run states, permissions, links).
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

from include.mlops import artifacts
from include.mlops.config import ModelConfig, models_dir, scan_model_configs

log = logging.getLogger(__name__)

# The gate tasks of the lifecycle DAG, last first: a run's final decision is the last one that ran.
GATE_TASKS = ("gate_optimized", "gate")
REPORT_STEPS = ("evaluate", "evaluate_optimized")
REPORT_FILE = "report.html"
VERSION_REPORT = "assets.extra/evidence/evaluate/report.html"
_METADATA = {"metrics": "metrics.json", "lineage": "lineage.json", "gate": "gate.json"}
_RUN_FOLDER = re.compile(
    r"^(?P<type>[a-z_]+?)__(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<h>\d{2})_(?P<m>\d{2})_(?P<s>\d{2}))?"
)


class UnknownError(LookupError):
    """A model, version or run that the registry and run folders do not hold (an HTTP 404)."""


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
        return {**_shallow(self), "outcome": self.outcome}

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
        return _shallow(self)


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    version: int
    labels: list[str]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    gate: Decision | None
    checksum_status: str
    checksum_problems: list[str]
    has_report: bool

    def to_dict(self) -> dict[str, Any]:
        return _shallow(self)


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    name: str
    dag_id: str
    serving_name: str
    gate_metrics: list[str]
    labels: dict[str, int]
    version_count: int
    stable_version: int | None
    stable_metrics: dict[str, Any]
    deployed: dict[str, Any] | None
    last_run: RunRecord | None

    def to_dict(self) -> dict[str, Any]:
        return _shallow(self)


class _FileCache:
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


class Catalog:
    """Models, versions and run history under one artifact root."""

    def __init__(
        self, artifact_root: str | os.PathLike[str] | None = None, models: str | os.PathLike[str] | None = None
    ):
        self.root = Path(artifact_root).resolve() if artifact_root is not None else artifacts.artifact_root()
        self.models_dir = Path(models) if models is not None else models_dir()
        self.registry_root = artifacts.registry_root(self.root)
        self.runs_root = self.root / "runs"
        self._files = _FileCache()
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[list[int], RunRecord]] = {}
        self._configs_key: tuple[Any, ...] | None = None
        self._configs: dict[str, ModelConfig] = {}

    # ------------------------------------------------------------------ models

    def configs(self) -> dict[str, ModelConfig]:
        """The valid model configs by name, parsed again only when a config file changed."""
        try:
            files = sorted(self.models_dir.glob("*.yaml"))
            key = tuple((p.name, p.stat().st_mtime_ns) for p in files)
        except OSError:
            files, key = [], ()
        if key != self._configs_key:
            configs, errors = scan_model_configs(self.models_dir) if files else ([], {})
            for path, error in errors.items():
                log.warning("Models view: model config %s is invalid and not shown: %s", path, error)
            self._configs = {c.name: c for c in configs}
            self._configs_key = key
        return self._configs

    def model_names(self) -> list[str]:
        """Every model: the configs, and registry folders whose config is gone (their versions still exist)."""
        configs = self.configs()
        served = {c.serving_name for c in configs.values()}
        orphans = set()
        if self.registry_root.is_dir():
            orphans = {
                p.name
                for p in self.registry_root.iterdir()
                if p.is_dir() and not p.name.startswith(".") and p.name not in served
            }
        return sorted({*configs, *orphans})

    def _identity(self, name: str) -> tuple[str, str, list[str]]:
        """(dag_id, serving_name, gate metrics) of a known model; :class:`UnknownError` for any other name."""
        if name not in self.model_names():
            raise UnknownError(f"no model named {name!r}: it has no model config and no registry folder")
        config = self.configs().get(name)
        if config is None:
            return f"lifecycle__{name}", name, []
        gate = config.gate
        metrics = list(dict.fromkeys([*gate.thresholds, *gate.max_regression, *gate.budgets]))
        return config.dag_id, config.serving_name, metrics

    def dag_id(self, name: str) -> str:
        return self._identity(name)[0]

    def labels(self, serving_name: str) -> dict[str, int]:
        return _labels_text(self.registry_root / "models.config", serving_name)

    def versions(self, name: str) -> list[int]:
        base = self.registry_root / self._identity(name)[1]
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and int(p.name) > 0 and p.is_dir())

    def model(self, name: str, runs: list[RunRecord] | None = None) -> ModelRecord:
        """The model's summary; ``runs`` is :meth:`runs` when the caller already has it."""
        dag_id, serving_name, gate_metrics = self._identity(name)
        labels = self.labels(serving_name)
        versions = self.versions(name)
        stable = labels.get("stable")
        stable_metrics = self._metadata(serving_name, stable)["metrics"] or {} if stable in versions else {}
        runs = self.runs(name) if runs is None else runs
        deployed = next(
            (
                {**r.deployed, "run_folder": r.folder, "run_id": None}
                for r in reversed(runs)
                if r.deployed and r.deployed.get("label") == "stable" and r.deployed.get("version") == stable
            ),
            None,
        )
        if deployed is not None:
            # The run that deployed stable registered it too: its lineage has the exact run id (folders are sanitised).
            lineage = self._metadata(serving_name, stable)["lineage"] or {}
            if artifacts.safe_segment(str(lineage.get("run_id"))) == deployed["run_folder"]:
                deployed["run_id"] = lineage["run_id"]
        return ModelRecord(
            name=name,
            dag_id=dag_id,
            serving_name=serving_name,
            gate_metrics=gate_metrics or sorted(stable_metrics),
            labels=labels,
            version_count=len(versions),
            stable_version=stable,
            stable_metrics=stable_metrics,
            deployed=deployed,
            last_run=runs[-1] if runs else None,
        )

    def models(self) -> list[ModelRecord]:
        return [self.model(name) for name in self.model_names()]

    # ------------------------------------------------------------------ versions

    def _metadata(self, serving_name: str, version: int | None) -> dict[str, Any]:
        folder = os.path.join(self.registry_root, serving_name, str(version), "assets.extra")
        return {key: self._files.json(os.path.join(folder, file)) for key, file in _METADATA.items()}

    def version_records(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, newest first."""
        serving_name = self._identity(name)[1]
        by_version: dict[int, list[str]] = {}
        for label, version in self.labels(serving_name).items():
            by_version.setdefault(version, []).append(label)
        records = []
        for version in reversed(self.versions(name)):
            folder = self.registry_root / serving_name / str(version)
            meta = self._metadata(serving_name, version)
            problems = self._listed_files_problems(folder)
            records.append(
                VersionRecord(
                    version=version,
                    labels=sorted(by_version.get(version, [])),
                    metrics=meta["metrics"] or {},
                    lineage=meta["lineage"] or {},
                    gate=_decision("gate", meta["gate"], None) if meta["gate"] else None,
                    checksum_status="files match checksums.json's list" if not problems else "problem",
                    checksum_problems=problems,
                    has_report=(folder / VERSION_REPORT).is_file(),
                )
            )
        return records

    def version_record(self, name: str, version: str | int) -> VersionRecord:
        number = self.check_version(name, version)
        return next(r for r in self.version_records(name) if r.version == number)

    def check_version(self, name: str, version: str | int) -> int:
        """``version`` as a registered version number of ``name``; :class:`UnknownError` otherwise."""
        text = str(version)
        if not text.isdigit() or int(text) not in self.versions(name):
            raise UnknownError(f"model {name!r} has no version {text!r} (versions: {self.versions(name) or 'none'})")
        return int(text)

    def version_dir(self, name: str, version: str | int) -> Path:
        return self.registry_root / self._identity(name)[1] / str(self.check_version(name, version))

    def model_card(self, name: str, version: str | int) -> str | None:
        path = self.version_dir(name, version) / "assets.extra" / "model_card.md"
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def version_report(self, name: str, version: str | int) -> Path:
        path = self.version_dir(name, version) / VERSION_REPORT
        if not path.is_file():
            raise UnknownError(f"model {name!r} version {version} has no evaluation report")
        return path

    def _listed_files_problems(self, folder: Path) -> list[str]:
        """Files missing from, or not listed in, checksums.json: a cheap check (no hashing; that is verify)."""
        top = str(folder)
        listed = self._files.json(os.path.join(top, "assets.extra", "checksums.json"))
        if not isinstance(listed, Mapping):
            return ["assets.extra/checksums.json is missing or not valid JSON"]
        present = set()
        for root, _, files in os.walk(top):
            prefix = root[len(top) + 1 :].replace(os.sep, "/")
            present.update(f"{prefix}/{f}" if prefix else f for f in files)
        present.discard("assets.extra/checksums.json")
        problems = [f"{rel} is missing" for rel in sorted(set(listed) - present)]
        return problems + [f"{rel} is not listed in checksums.json" for rel in sorted(present - set(listed))]

    # ------------------------------------------------------------------ runs

    def runs(self, name: str) -> list[RunRecord]:
        """Every run folder of the model's lifecycle DAG, oldest first (by run date, then folder name)."""
        folder = self.runs_root / artifacts.safe_segment(self.dag_id(name))
        if not folder.is_dir():
            return []
        records = [self._run(entry) for entry in os.scandir(folder) if entry.is_dir() and entry.name[0] != "."]
        return sorted(records, key=lambda r: (r.date or "", r.folder))

    def run_folder(self, name: str, run: str) -> Path:
        """The folder of one run of ``name``, if that run exists; :class:`UnknownError` otherwise."""
        base = self.runs_root / artifacts.safe_segment(self.dag_id(name))
        known = {e.name for e in os.scandir(base) if e.is_dir()} if base.is_dir() else set()
        if run.startswith(".") or run not in known:
            raise UnknownError(f"model {name!r} has no run {run!r}")
        return base / run

    def run_report(self, name: str, run: str, step: str) -> Path:
        if step not in REPORT_STEPS:
            raise UnknownError(f"no report step {step!r} (known: {', '.join(REPORT_STEPS)})")
        path = self.run_folder(name, run) / step / REPORT_FILE
        if not path.is_file():
            raise UnknownError(f"run {run!r} of model {name!r} has no {step} report")
        return path

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
                    decision = _decision(task_id, record["decision"], record.get("route"))
                    break
        result = os.path.join(path, "register", "result.json")
        registered = self._files.json(result) if "register" in steps else None
        result = os.path.join(path, "deploy", "result.json")
        deployed = self._files.json(result) if "deploy" in steps else None
        if isinstance(deployed, Mapping):
            # When the label moved: the deploy step writes its result.json right after moving it.
            moved = dt.datetime.fromtimestamp(os.stat(result).st_mtime, dt.UTC)
            deployed = {**deployed, "deployed_at": moved.isoformat(timespec="seconds")}
        match = _RUN_FOLDER.match(entry.name)
        date = None
        if match:
            # Run ids carry UTC times (Airflow writes them with +00:00, which the folder name lost).
            date = (
                match["date"] + (f"T{match['h']}:{match['m']}:{match['s']}" if match["h"] else "T00:00:00") + "+00:00"
            )
        return RunRecord(
            folder=entry.name,
            run_type=match["type"] if match else "unknown",
            date=date,
            decision=decision,
            registered_version=registered.get("version") if isinstance(registered, Mapping) else None,
            deployed=dict(deployed) if isinstance(deployed, Mapping) else None,
            reports=[s for s in REPORT_STEPS if s in steps and os.path.isfile(os.path.join(path, s, REPORT_FILE))],
            mtime=entry.stat().st_mtime,
        )


def _shallow(record: Any) -> dict[str, Any]:
    """A record as a dict for JSON and templates, sharing its values (dataclasses.asdict deep-copies: 10x slower)."""
    out = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        out[field.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def _decision(task_id: str, data: Mapping[str, Any], route: str | None) -> Decision:
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


_LABELS_CACHE: dict[Path, tuple[tuple[int, int], dict[str, dict[str, int]]]] = {}


def _labels_text(config_path: Path, serving_name: str) -> dict[str, int]:
    """The version labels of one model in TF Serving's model config file, parsed once per change of the file."""
    try:
        info = config_path.stat()
    except OSError:
        return {}
    key = (info.st_mtime_ns, info.st_size)
    cached = _LABELS_CACHE.get(config_path)
    if cached is None or cached[0] != key:
        # The registry's own parser (TF Serving's protos), so the view reads the file exactly as serving does.
        from include.mlops.registry.filesystem import Registry

        config = Registry(config_path.parent).read_serving_config()
        labels = {e.name: dict(e.version_labels) for e in config.model_config_list.config}
        cached = (key, labels)
        _LABELS_CACHE[config_path] = cached
    return dict(cached[1].get(serving_name, {}))
