"""What the Models view shows: models, versions, gate decisions and the quality history, read from files.

Read-only and cheap: it reads only small metadata files (the registry's
``models.config`` and ``assets.extra/*.json``, the run folders' gate
``decision.json``, register and deploy ``result.json``), never model weights
or datasets, and keeps what it parsed keyed on each file's mtime and size, so
a page for 200 versions and 1,000 runs re-reads only what changed.

Every lookup by name, version or run folder is checked against what exists
(the model configs, the registry's version folders, the run folders) before a
path is built from it: a URL cannot name a file outside those.

The run folders are read by :mod:`include.mlops.registry.run_folders` (the
monitor's by :mod:`include.mlops.registry.monitor_status`); the labels come through the :class:`~include.mlops.registry.protocol.ModelRegistry`
(TF Serving's own parser of ``models.config``), and version metadata straight
from the version folders, cached like the run files.

No Airflow imports: the Airflow glue (``plugins/mlops_airflow/models_view``)
adds what only Airflow knows (run states, permissions, links).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig, models_dir, scan_model_configs
from include.mlops.deploy.journal import unfinished_deploys
from include.mlops.registry.label_log import read_label_moves
from include.mlops.registry.monitor_status import MonitorHealth, MonitorRuns
from include.mlops.registry.run_folders import GATE_TASKS as GATE_TASKS  # re-exported with the run records
from include.mlops.registry.run_folders import (
    REPORT_FILE,
    REPORT_STEPS,
    Decision,
    FileCache,
    RunHistory,
    RunRecord,
    as_dict,
    parse_decision,
)
from include.mlops.registry.version_files import (
    CHECKSUMS_FILE,
    GATE_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    checksum_problems,
)

if TYPE_CHECKING:
    from include.mlops.registry.protocol import ModelRegistry

log = logging.getLogger(__name__)

VERSION_REPORT = "assets.extra/evidence/evaluate/report.html"
_METADATA = {"metrics": METRICS_FILE, "lineage": LINEAGE_FILE, "gate": GATE_FILE}


class UnknownError(LookupError):
    """A model, version or run that the registry and run folders do not hold (an HTTP 404)."""


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
        return as_dict(self)


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
    # Label moves a deploy started and did not finish: {"label", "version", "previous", "started_at", "pid", "host"};
    # ``labels`` and ``stable_version`` already give such a label's last verified version.
    unfinished_deploys: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


class Catalog:
    """Models, versions and run history under one artifact root."""

    def __init__(
        self, artifact_root: str | os.PathLike[str] | None = None, models: str | os.PathLike[str] | None = None
    ):
        self.root = Path(artifact_root).resolve() if artifact_root is not None else artifacts.artifact_root()
        self.models_dir = Path(models) if models is not None else models_dir()
        self.registry_root = artifacts.registry_root(self.root)
        self.runs_root = self.root / "runs"
        self._files = FileCache()
        self._history = RunHistory(self._files)
        self._monitor = MonitorRuns(self._files)
        self._registry: ModelRegistry | None = None
        self._configs_key: tuple[Any, ...] | None = None
        self._configs: dict[str, ModelConfig] = {}
        self._verified: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

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

    def claimed_dag_id(self, name: str) -> str:
        """The lifecycle DAG id of ``name`` whether or not such a model exists.

        For the access check that comes before the lookup: a user who may not
        read the DAG must not learn whether the model exists.
        """
        config = self.configs().get(name)
        return config.dag_id if config is not None else f"lifecycle__{name}"

    def _identity(self, name: str) -> tuple[str, str, list[str]]:
        """(dag_id, serving_name, gate metrics) of a known model; :class:`UnknownError` for any other name."""
        if name not in self.model_names():
            raise UnknownError(f"no model named {name!r}: it has no model config and no registry folder")
        config = self.configs().get(name)
        if config is None:
            return self.claimed_dag_id(name), name, []
        gate = config.gate
        metrics = list(dict.fromkeys([*gate.thresholds, *gate.max_regression, *gate.budgets]))
        return config.dag_id, config.serving_name, metrics

    def dag_id(self, name: str) -> str:
        return self._identity(name)[0]

    def registry(self) -> ModelRegistry:
        """The registry under this artifact root (built on first use: it loads TF Serving's protos)."""
        if self._registry is None:
            from include.mlops.registry.filesystem import Registry

            self._registry = Registry(self.registry_root)
        return self._registry

    def labels(self, serving_name: str) -> dict[str, int]:
        return _labels(self.registry(), serving_name)

    def versions(self, name: str) -> list[int]:
        base = self.registry_root / self._identity(name)[1]
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and int(p.name) > 0 and p.is_dir())

    def model(self, name: str, runs: list[RunRecord] | None = None) -> ModelRecord:
        """The model's summary; ``runs`` is :meth:`runs` when the caller already has it."""
        dag_id, serving_name, gate_metrics = self._identity(name)
        labels, unfinished = self._verified_labels(serving_name)
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
            unfinished_deploys=unfinished,
        )

    def _verified_labels(self, serving_name: str) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The labels as their last verified versions, and the unfinished moves (the deploy journals) behind them."""
        labels = self.labels(serving_name)
        unfinished = []
        for journal in unfinished_deploys(self.registry_root / serving_name):
            if journal.previous is None:
                labels.pop(journal.label, None)
            else:
                labels[journal.label] = journal.previous
            unfinished.append(
                {k: getattr(journal, k) for k in ("label", "version", "previous", "started_at", "pid", "host")}
            )
        return labels, unfinished

    def models(self) -> list[ModelRecord]:
        return [self.model(name) for name in self.model_names()]

    def label_moves(self, name: str) -> list[dict[str, Any]]:
        """The audit log of the model's label moves (:mod:`~include.mlops.registry.label_log`), newest first."""
        return list(reversed(read_label_moves(self.registry_root / self._identity(name)[1])))

    # ------------------------------------------------------------------ versions

    def _metadata(self, serving_name: str, version: int | None) -> dict[str, Any]:
        folder = os.path.join(self.registry_root, serving_name, str(version))
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
                    gate=parse_decision("gate", meta["gate"], None) if meta["gate"] else None,
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
        path = self.version_dir(name, version) / MODEL_CARD_FILE
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def version_report(self, name: str, version: str | int) -> Path:
        path = self.version_dir(name, version) / VERSION_REPORT
        if not path.is_file():
            raise UnknownError(f"model {name!r} version {version} has no evaluation report")
        return path

    def verification(self, name: str, version: str | int) -> dict[str, Any]:
        """Every file of a version hashed against its checksums.json: ``{"verified", "files", "problems"}``.

        Hashed again only when a file of the version was added, removed or
        changed (its size, mtime or ctime), so asking twice costs a walk of the
        folder, not a read of the model.
        """
        folder = str(self.version_dir(name, version))
        signature = []
        for root, _, files in os.walk(folder):
            for file in files:
                path = os.path.join(root, file)
                try:
                    info = os.stat(path)
                except OSError:  # gone between the walk and the stat: hashing will tell
                    continue
                signature.append((path, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
        key = tuple(sorted(signature))
        cached = self._verified.get(folder)
        if cached is not None and cached[0] == key:
            return cached[1]
        actual, problems = checksum_problems(Path(folder))
        result = {"verified": not problems, "files": None if problems else len(actual), "problems": problems}
        self._verified[folder] = (key, result)
        return result

    def _listed_files_problems(self, folder: Path) -> list[str]:
        """Files missing from, or not listed in, checksums.json: a cheap check (no hashing; that is verify)."""
        top = str(folder)
        listed = self._files.json(os.path.join(top, CHECKSUMS_FILE))
        if not isinstance(listed, Mapping):
            return [f"{CHECKSUMS_FILE} is missing or not valid JSON"]
        present = set()
        for root, _, files in os.walk(top):
            prefix = root[len(top) + 1 :].replace(os.sep, "/")
            present.update(f"{prefix}/{f}" if prefix else f for f in files)
        present.discard(CHECKSUMS_FILE)
        problems = [f"{rel} is missing" for rel in sorted(set(listed) - present)]
        return problems + [f"{rel} is not listed in checksums.json" for rel in sorted(present - set(listed))]

    # ------------------------------------------------------------------ runs

    def runs(self, name: str) -> list[RunRecord]:
        """Every run folder of the model's lifecycle DAG, oldest first (by run date, then folder name)."""
        return self._history.records(self.runs_root / artifacts.safe_segment(self.dag_id(name)))

    def run_folder(self, name: str, run: str) -> Path:
        """The folder of one run of ``name``, if that run exists; :class:`UnknownError` otherwise."""
        base = self.runs_root / artifacts.safe_segment(self.dag_id(name))
        known = {e.name for e in os.scandir(base) if e.is_dir()} if base.is_dir() else set()
        if run.startswith(".") or run not in known:
            raise UnknownError(f"model {name!r} has no run {run!r}")
        return base / run

    def health(self, name: str) -> MonitorHealth:
        """The newest decided monitor run of ``name`` (:mod:`~include.mlops.registry.monitor_status`)."""
        return self._monitor.latest(self._monitor_runs(name))

    def monitor_report(self, name: str, run: str) -> Path:
        path = self._monitor.report(self._monitor_runs(name), run)
        if path is None:
            raise UnknownError(f"model {name!r} has no monitor run {run!r} with a report")
        return path

    def _monitor_runs(self, name: str) -> Path:
        self._identity(name)  # an unknown name is a 404 before a path is built from it
        config = self.configs().get(name)
        return self.runs_root / artifacts.safe_segment(config.monitor_dag_id if config else f"monitor__{name}")

    def run_report(self, name: str, run: str, step: str) -> Path:
        if step not in REPORT_STEPS:
            raise UnknownError(f"no report step {step!r} (known: {', '.join(REPORT_STEPS)})")
        path = self.run_folder(name, run) / step / REPORT_FILE
        if not path.is_file():
            raise UnknownError(f"run {run!r} of model {name!r} has no {step} report")
        return path


_LABELS_CACHE: dict[Path, tuple[tuple[int, int], dict[str, dict[str, int]]]] = {}


def _labels(registry: ModelRegistry, serving_name: str) -> dict[str, int]:
    """The version labels of one model in the registry's model config file, parsed once per change of the file."""
    config_path = registry.config_path
    try:
        info = config_path.stat()
    except OSError:
        return {}
    key = (info.st_mtime_ns, info.st_size)
    cached = _LABELS_CACHE.get(config_path)
    if cached is None or cached[0] != key:
        config = registry.read_serving_config()
        labels = {e.name: dict(e.version_labels) for e in config.model_config_list.config}
        cached = (key, labels)
        _LABELS_CACHE[config_path] = cached
    return dict(cached[1].get(serving_name, {}))
