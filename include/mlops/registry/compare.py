"""Two versions of a model side by side, as MLflow's registry compares them: every value, and which differ.

Metrics, the hyperparameters that made each version (the chosen tuning trial's
when the optimize branch made it), the data and run it came from, the gate's
decision and the model cards.  Read from the version folders and, for the
hyperparameters, the run folder of the version's run (register does not copy
the train and tune records into ``assets.extra/evidence/``; where a version
holds them there, they are read from there first).

No Airflow imports: the Models view (``plugins/mlops_airflow/models_view``)
renders it and adds the links.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.registry.catalog import Catalog, UnknownError, VersionRecord
from include.mlops.registry.run_folders import TRAIN_RECORD, TUNE_RECORD
from include.mlops.registry.version_files import EVIDENCE_DIR

log = logging.getLogger(__name__)

# The train step's and the tune_select step's records (TRAIN_RECORD, TUNE_RECORD), under the run folder (the task
# ids) or the evidence.
# Lineage keys shown under "data and run", in this order; others the lineage has follow them.
DATA_KEYS = ("data_interval_start", "data_interval_end", "run_id", "run_type", "created_at", "try_number",
             "data_sha256", "snapshot_sha256", "code_version", "triggered_by")  # fmt: skip


class CompareInputError(ValueError):
    """The two versions to compare are missing, not version numbers, or the same version (an HTTP 400)."""


def requested_versions(a: str | None, b: str | None) -> tuple[int, int]:
    """``a`` and ``b`` of ``?a=1&b=3`` as two different version numbers; :class:`CompareInputError` otherwise."""
    for key, value in (("a", a), ("b", b)):
        if value is None or value == "":
            raise CompareInputError(
                f"pick two versions to compare: ?a=<version>&b=<version> (parameter {key} is missing)"
            )
        if not value.isdigit() or int(value) < 1:
            raise CompareInputError(f"parameter {key}={value!r} is not a version number (1, 2, ...)")
    if int(a) == int(b):  # type: ignore[arg-type]
        raise CompareInputError(f"a and b are both version {int(a)}: pick two different versions")  # type: ignore[arg-type]
    return int(a), int(b)  # type: ignore[arg-type]


def compare_versions(catalog: Catalog, name: str, a: int, b: int) -> dict[str, Any]:
    """Versions ``a`` and ``b`` of ``name`` in sections of rows ``{key, a, b, differs}``, and both model cards."""
    records = {r.version: r for r in catalog.version_records(name)}
    for version in (a, b):
        catalog.check_version(name, version)  # UnknownError, with the versions there are
    ra, rb = records[a], records[b]
    ta, tb = training_record(catalog, name, ra), training_record(catalog, name, rb)
    la, lb = _data(ra.lineage), _data(rb.lineage)
    sections = [
        {"title": "Metrics", "id": "metrics", "rows": _rows(ra.metrics, rb.metrics)},
        {"title": "Hyperparameters", "id": "hyperparameters", "rows": _rows(ta["hparams"], tb["hparams"])},
        {"title": "Training", "id": "training",
         "rows": _rows({k: v for k, v in ta.items() if k != "hparams"}, {k: v for k, v in tb.items() if k != "hparams"})},
        {"title": "Data and run", "id": "data", "rows": _rows(la, lb, order=DATA_KEYS)},
        {"title": "Gate decision", "id": "gate", "rows": _rows(_gate(ra), _gate(rb))},
    ]  # fmt: skip
    return {
        "name": name,
        "a": {"version": a, "labels": ra.labels},
        "b": {"version": b, "labels": rb.labels},
        "sections": sections,
        "model_cards": {"a": catalog.model_card(name, a), "b": catalog.model_card(name, b)},
    }


def training_record(catalog: Catalog, name: str, record: VersionRecord) -> dict[str, Any]:
    """The hyperparameters that made a version: ``{"source", "trial", "val_loss", "hparams"}``.

    The chosen trial of ``tune_select`` when the run tuned (the candidate that
    passed ``gate_optimized`` came from it), else the ``train`` step's; the
    version's evidence first, then its run folder.  ``source`` is None when
    neither is there (a run folder cleaned up, or a version registered by hand).
    """
    places = [catalog.version_dir(name, record.version) / EVIDENCE_DIR]
    run_id = record.lineage.get("run_id")
    if run_id:
        try:
            places.append(catalog.run_folder(name, artifacts.safe_segment(str(run_id))))
        except UnknownError:
            pass
    model_uri = str((record.lineage.get("sources") or {}).get("model_uri") or "")
    trained_model = "/train/" in Path(model_uri).as_posix() + "/"
    for place in places:
        tuned = _read(place / TUNE_RECORD)
        if isinstance(tuned, Mapping) and tuned.get("best") is not None and not trained_model:
            trials = [t for t in tuned.get("trials") or [] if isinstance(t, Mapping)]
            best = next((t for t in trials if t.get("trial") == tuned["best"]), None)
            if isinstance(best, Mapping):
                return {"source": f"tuning trial {tuned['best']} ({TUNE_RECORD})", "trial": tuned["best"],
                        "val_loss": best.get("val_loss"), "hparams": dict(best.get("hparams") or {})}  # fmt: skip
        trained = _read(place / TRAIN_RECORD)
        if isinstance(trained, Mapping):
            return {"source": f"the train step ({TRAIN_RECORD})", "trial": None,
                    "val_loss": trained.get("val_loss"), "hparams": dict(trained.get("hparams") or {})}  # fmt: skip
    return {"source": None, "trial": None, "val_loss": None, "hparams": {}}


def _read(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("Models view: skipping %s (%s)", path, exc)
        return None


def _data(lineage: Mapping[str, Any]) -> dict[str, Any]:
    skip = ("paths_relative_to",)
    return {
        k: v
        for k, v in lineage.items()
        if not isinstance(v, (Mapping, list)) and not k.endswith("_uri") and k not in skip
    }


def _gate(record: VersionRecord) -> dict[str, Any]:
    gate = record.gate
    if gate is None:
        return {"outcome": "no gate record"}
    values: dict[str, Any] = {
        "outcome": "passed by override" if gate.override else ("passed" if gate.passed else "failed"),
        "reasons": gate.reasons,
    }
    for metric, bound in sorted(gate.bounds.items()):
        values[f"{metric} bound"] = ", ".join(f"{side} {value}" for side, value in sorted(bound.items()))
    return values


def _rows(a: Mapping[str, Any], b: Mapping[str, Any], order: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    keys = [k for k in order if k in a or k in b] + sorted((set(a) | set(b)) - set(order))
    return [{"key": k, "a": a.get(k), "b": b.get(k), "differs": a.get(k) != b.get(k)} for k in keys]
