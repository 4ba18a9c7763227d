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
monitor's by :mod:`include.mlops.registry.monitor_status`); versions, labels
(TF Serving's own parser of ``models.config``), label moves and checksums come
through the :class:`~include.mlops.registry.protocol.ModelRegistry`, and the
version files from the version folders, cached like the run files.  On an
object-store root (``s3://``) the registry is the bucket's and those local
readers read a folder of the view's own, which
:class:`~include.mlops.registry.catalog_bucket.BucketView` fills with the small
files they read (never a model) and refreshes at most every few seconds; on a
folder root nothing of that runs.

No Airflow imports: the Airflow glue (``plugins/mlops_airflow/models_view``)
adds what only Airflow knows (run states, permissions, links).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifact_store, artifacts
from include.mlops.config import ModelConfig, models_dir, scan_model_configs
from include.mlops.deploy.journal import unfinished_deploys
from include.mlops.names import serving_name_problem
from include.mlops.registry import monitor_status, run_folders
from include.mlops.registry.catalog_bucket import BucketView, subfolders
from include.mlops.registry.catalog_records import ModelRecord as ModelRecord  # re-exported
from include.mlops.registry.catalog_records import VersionRecord as VersionRecord  # re-exported
from include.mlops.registry.monitor_status import MonitorHealth, MonitorRuns
from include.mlops.registry.protocol import CorruptVersionError
from include.mlops.registry.run_folders import GATE_TASKS as GATE_TASKS  # re-exported with the run records
from include.mlops.registry.run_folders import (
    REPORT_FILE,
    REPORT_STEPS,
    FileCache,
    RunHistory,
    RunRecord,
    parse_decision,
)
from include.mlops.registry.version_files import (
    CHECKSUMS_FILE,
    GATE_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    folder_files,
)

if TYPE_CHECKING:
    from include.mlops.registry.protocol import ModelRegistry

log = logging.getLogger(__name__)

VERSION_REPORT = "assets.extra/evidence/evaluate/report.html"
_METADATA = {"metrics": METRICS_FILE, "lineage": LINEAGE_FILE, "gate": GATE_FILE}
# What the view reads in run folders: all that an object-store root's runs bring over (catalog_bucket).
VIEW_FILES = (*run_folders.VIEW_FILES, *monitor_status.VIEW_FILES)


class UnknownError(LookupError):
    """A model, version or run that the registry and run folders do not hold (an HTTP 404)."""


class Catalog:
    """Models, versions and run history under one artifact root (the configured one when none is given)."""

    def __init__(
        self, artifact_root: str | os.PathLike[str] | None = None, models: str | os.PathLike[str] | None = None
    ):
        store = artifact_store.current() if artifact_root is None else None
        self._bucket = BucketView(store) if store is not None else None
        if self._bucket is not None:
            self.root = self._bucket.root
        else:
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
        self._verified: dict[tuple[str, int], tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def _read(self, key: Any, read: Any) -> Any:
        """``read()``; on an object store, its answer kept for the bucket view's refresh interval."""
        return read() if self._bucket is None else self._bucket.fresh(key, read)

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
        folders = self._bucket.model_folders() if self._bucket is not None else subfolders(self.registry_root)
        orphans = {f for f in folders if f not in served and not f.startswith(".") and serving_name_problem(f) is None}
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
        """The registry under this artifact root, the bucket's on object storage (built on first use: it loads
        TF Serving's protos)."""
        if self._registry is None:
            self._registry = artifact_store.open_registry(None if self._bucket else self.registry_root)
        return self._registry

    def labels(self, serving_name: str) -> dict[str, int]:
        if self._bucket is None:
            return _labels(self.registry(), serving_name)
        every = self._bucket.fresh("labels", lambda: _all_labels(self.registry().read_serving_config()))
        return dict(every.get(serving_name, {}))

    def versions(self, name: str) -> list[int]:
        serving_name = self._identity(name)[1]
        return list(self._read(("versions", serving_name), lambda: self.registry().versions(serving_name)))

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
        for journal in self._read(("journals", serving_name), lambda: _journals(self.registry(), serving_name)):
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
        serving_name = self._identity(name)[1]
        return list(
            reversed(self._read(("moves", serving_name), lambda: self.registry().read_label_moves(serving_name)))
        )

    # ------------------------------------------------------------------ versions

    def _version_folder(self, serving_name: str, version: int) -> Path:
        """The local folder of a registered version's files (of its ``assets.extra/`` on an object store)."""
        if self._bucket is not None:
            return self._bucket.version_files(serving_name, version)
        return self.registry_root / serving_name / str(version)

    def _metadata(self, serving_name: str, version: int) -> dict[str, Any]:
        folder = str(self._version_folder(serving_name, version))
        return {key: self._files.json(os.path.join(folder, file)) for key, file in _METADATA.items()}

    def version_records(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, newest first."""
        serving_name = self._identity(name)[1]
        by_version: dict[int, list[str]] = {}
        for label, version in self.labels(serving_name).items():
            by_version.setdefault(version, []).append(label)
        records = []
        for version in reversed(self.versions(name)):
            folder = self._version_folder(serving_name, version)
            meta = self._metadata(serving_name, version)
            problems = self._listed_files_problems(serving_name, version, folder)
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
        """The local folder of a version's files (on an object store, of its ``assets.extra/`` only)."""
        return self._version_folder(self._identity(name)[1], self.check_version(name, version))

    def model_card(self, name: str, version: str | int) -> str | None:
        path = self.version_dir(name, version) / MODEL_CARD_FILE
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def version_report(self, name: str, version: str | int) -> Path:
        path = self.version_dir(name, version) / VERSION_REPORT
        if not path.is_file():
            raise UnknownError(f"model {name!r} version {version} has no evaluation report")
        return path

    def verification(self, name: str, version: str | int) -> dict[str, Any]:
        """Every file of a version hashed against its checksums.json by the registry: ``{"verified", "files", "problems"}``.

        Hashed again only when a file of the version was added, removed or changed (its size, mtime or ctime; its
        ETag on an object store), so asking twice costs a walk of the folder (a LIST), not a read of the model.
        """
        serving_name, number = self._identity(name)[1], self.check_version(name, version)
        key = tuple(sorted(self._version_files(serving_name, number, stat=True).items()))
        cached = self._verified.get((serving_name, number))
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            files, problems = len(self.registry().verify(serving_name, number)), []
        except CorruptVersionError as exc:
            files, problems = None, exc.problems
        result = {"verified": not problems, "files": files, "problems": problems}
        self._verified[serving_name, number] = (key, result)
        return result

    def _version_files(self, serving_name: str, version: int, *, stat: bool = False) -> dict[str, Any]:
        """``{path in the version: its ETag, or with stat its (size, mtime, ctime)}`` of every file of a version."""
        if self._bucket is not None:
            return self._bucket.version_listing(serving_name, version)
        return folder_files(self.registry_root / serving_name / str(version), stat=stat)

    def _listed_files_problems(self, serving_name: str, version: int, folder: Path) -> list[str]:
        """Files missing from, or not listed in, checksums.json: a cheap check (no hashing; that is verify)."""
        listed = self._files.json(os.path.join(str(folder), CHECKSUMS_FILE))
        if not isinstance(listed, Mapping):
            return [f"{CHECKSUMS_FILE} is missing or not valid JSON"]
        present = set(self._version_files(serving_name, version))
        present.discard(CHECKSUMS_FILE)
        problems = [f"{rel} is missing" for rel in sorted(set(listed) - present)]
        return problems + [f"{rel} is not listed in checksums.json" for rel in sorted(present - set(listed))]

    # ------------------------------------------------------------------ runs

    def _runs_of(self, dag_id: str) -> Path:
        """The local folder of a DAG's run folders (on an object store, refreshed from the bucket first)."""
        folder = artifacts.safe_segment(dag_id)
        if self._bucket is not None:
            self._bucket.sync_runs(folder, VIEW_FILES)
        return self.runs_root / folder

    def runs(self, name: str) -> list[RunRecord]:
        """Every run folder of the model's lifecycle DAG, oldest first (by run date, then folder name)."""
        return self._history.records(self._runs_of(self.dag_id(name)))

    def run_folder(self, name: str, run: str) -> Path:
        """The folder of one run of ``name``, if that run exists; :class:`UnknownError` otherwise."""
        base = self._runs_of(self.dag_id(name))
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
        return self._runs_of(config.monitor_dag_id if config else f"monitor__{name}")

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
        cached = (key, _all_labels(registry.read_serving_config()))
        _LABELS_CACHE[config_path] = cached
    return dict(cached[1].get(serving_name, {}))


def _all_labels(config: Any) -> dict[str, dict[str, int]]:
    """``{model: {label: version}}`` of a parsed model config file."""
    return {e.name: dict(e.version_labels) for e in config.model_config_list.config}


def _journals(registry: ModelRegistry, serving_name: str) -> list[Any]:
    """The model's unfinished deploys, from the journals in its registry folder (or prefix)."""
    return unfinished_deploys(registry.model_dir(serving_name))
