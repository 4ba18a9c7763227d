"""The drift step: the window's logged requests against the training reference of the version that served them.

``check_drift`` reads the prediction log of the model's serving name for
``[window_start, window_end)`` and judges every row against its version's
``assets.extra/reference.json``: a two-sample test per feature against the
reference's training sample, Holm-corrected over every test of the window
(:mod:`.stattests`), decides which features have drifted, so that a window
from the training population is flagged with probability at most
``drift.false_alarm_rate``.  PSI over the reference bins and the out-of-range
share (:mod:`.scoring`) are reported as effect sizes.  A seeded sample of the
rows is validated with a Great Expectations suite derived from the reference
(:mod:`.expectations`); its failures are listed, not deciding.  The scores are
pushed to a Pushgateway when one is given (:mod:`.push`), and the check writes
``out/drift.json`` (the result) and ``out/validation.json`` (GX's result).

A version whose reference predates the training sample (format 1) is judged
by ``PSI > drift.psi_threshold`` instead, and ``problems`` says so: that rule's
false-alarm rate is not known.  A feature missing from logged rows has drifted.

Fewer usable rows than ``drift.min_rows`` is ``insufficient_data``, never
healthy.  Unreadable log files and rows of versions without a reference are
left out and named in ``problems``; the check goes on with the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifact_store, artifacts
from include.mlops.config import ModelConfig
from include.mlops.data.sources import as_utc
from include.mlops.monitoring.reference import has_sample, read_reference

if TYPE_CHECKING:
    import numpy as np

    from include.mlops.registry.protocol import ModelRegistry

log = logging.getLogger(__name__)

RESULT_FILE = "drift.json"
VALIDATION_FILE = "validation.json"
MISSING_REASON = "missing from logged requests"


class DriftInputError(ValueError):
    """The drift check was asked something it cannot answer (a bad window): a retry cannot help."""


@dataclass
class Window:
    """The logged rows of one model in a time window."""

    rows: np.ndarray  # float32 [n, features]; NaN where a row carried fewer values than there are features
    versions: np.ndarray  # int64 [n]
    problems: list[str] = field(default_factory=list)


def read_window(
    predictions_root: str | os.PathLike[str],
    serving_name: str,
    n_features: int,
    window_start: dt.datetime,
    window_end: dt.datetime,
) -> Window:
    """The prediction log rows of ``serving_name`` logged in ``[window_start, window_end)``.

    A file that cannot be read as the log's parquet is skipped and named in
    ``problems``.  Rows narrower than ``n_features`` are padded with NaN; values
    beyond ``n_features`` are ignored (and counted in ``problems``).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from include.mlops.serving.predlog import log_files

    start = pa.scalar(as_utc(window_start), pa.timestamp("us", tz="UTC"))
    end = pa.scalar(as_utc(window_end), pa.timestamp("us", tz="UTC"))
    problems: list[str] = []
    tables = []
    files = log_files(predictions_root, serving_name)
    for path in files:
        try:
            table = pq.read_table(path, columns=["timestamp", "model_version", "inputs"])
            timestamps = table["timestamp"].cast(pa.timestamp("us", tz="UTC"))
            in_window = pc.and_(pc.greater_equal(timestamps, start), pc.less(timestamps, end))
            tables.append(table.select(["model_version", "inputs"]).filter(in_window))
        except Exception as exc:  # truncated, corrupt or foreign files all fail in pyarrow
            problems.append(f"skipped prediction log file {path}: it cannot be read as the log's parquet ({exc})")
            log.warning("%s", problems[-1])
    log.info(
        "prediction log of %s: %d files, %d readable, window %s .. %s",
        serving_name, len(files), len(tables), window_start.isoformat(), window_end.isoformat(),
    )  # fmt: skip
    if not tables or sum(t.num_rows for t in tables) == 0:
        return Window(np.empty((0, n_features), np.float32), np.empty(0, np.int64), problems)
    table = pa.concat_tables(tables).combine_chunks()
    versions = table["model_version"].to_numpy(zero_copy_only=False).astype(np.int64)
    inputs = table["inputs"].chunk(0) if table["inputs"].num_chunks else pa.array([], pa.list_(pa.float32()))
    lengths = pc.fill_null(pc.list_value_length(inputs), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(inputs).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    n = len(lengths)
    if (lengths == n_features).all():
        return Window(values.reshape(n, n_features), versions, problems)
    rows = np.full((n, n_features), np.nan, dtype=np.float32)
    row_of_value = np.repeat(np.arange(n), lengths)
    column_of_value = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = column_of_value < n_features
    rows[row_of_value[keep], column_of_value[keep]] = values[keep]
    wider = int(np.count_nonzero(lengths > n_features))
    if wider:
        problems.append(
            f"{wider} logged rows carry more than the model's {n_features} features; the extra values were ignored"
        )
    return Window(rows, versions, problems)


def check_drift(
    config: ModelConfig,
    *,
    window_start: dt.datetime,
    window_end: dt.datetime,
    out: str | os.PathLike[str],
    registry: ModelRegistry | str | os.PathLike[str] | None = None,
    predictions_root: str | os.PathLike[str] | None = None,
    pushgateway_url: str | None = None,
) -> dict[str, Any]:
    """Compare the window's logged requests with their versions' training references (see the module docstring)."""
    import numpy as np

    from include.mlops.monitoring.expectations import validate_sample
    from include.mlops.monitoring.push import PushError, push_drift
    from include.mlops.monitoring.scoring import feature_columns, score_columns
    from include.mlops.monitoring.stattests import feature_tests, judge
    from include.mlops.registry.filesystem import Registry
    from include.mlops.serving.predlog import PREDICTIONS_DIR

    if as_utc(window_start) >= as_utc(window_end):
        raise DriftInputError(
            f"the drift window must start before it ends, got {window_start.isoformat()} .. {window_end.isoformat()}"
        )
    if registry is None:
        registry = artifact_store.open_registry()
    elif isinstance(registry, str | os.PathLike):
        registry = Registry(registry)
    root = Path(predictions_root) if predictions_root is not None else artifacts.artifact_root()
    name = config.serving_name
    # On object storage, the servers' uploaded log files join this machine's mirror first.
    store = artifact_store.current()
    if store is not None and store.relative(root) is not None:
        store.pull(root / PREDICTIONS_DIR / name)
    drift = config.monitor.drift
    features = list(config.features)
    window = read_window(root, name, len(features), window_start, window_end)
    problems = list(window.problems)

    # Each row is judged against the reference of the version that served it.
    references: dict[int, dict[str, Any]] = {}
    usable = np.zeros(len(window.versions), dtype=bool)
    version_rows: dict[int, int] = {}
    for version in sorted(int(v) for v in np.unique(window.versions)):
        selected = window.versions == version
        count = int(np.count_nonzero(selected))
        reference = _reference_of(registry, name, version)
        if reference is None:
            problems.append(
                f"{count} rows served by version {version} were left out: that version has no training reference "
                f"({registry.version_dir(name, version)}/assets.extra/reference.json)"
            )
            continue
        references[version] = reference
        version_rows[version] = count
        usable |= selected

    per_version: dict[str, dict[str, Any]] = {}
    tests: dict[str, dict[str, Any]] = {}
    for version, count in version_rows.items():
        if count < drift.min_rows:
            problems.append(f"version {version} served only {count} rows (< min_rows {drift.min_rows}); not scored")
            continue
        selected = window.versions == version
        columns = feature_columns(window.rows if selected.all() else window.rows[selected])
        per_version[str(version)] = score_columns(columns, references[version], features)
        if has_sample(references[version]):
            tests[str(version)] = feature_tests(references[version], columns, features)
        else:
            problems.append(
                f"version {version}'s training reference has no training sample (registered before it was stored): "
                f"its features are judged by PSI > {drift.psi_threshold}, whose false-alarm rate is not known"
            )
    judged = judge(tests, drift.false_alarm_rate)
    rows_used = int(np.count_nonzero(usable))

    out = Path(out)
    result: dict[str, Any] = {
        "status": "ok" if per_version else "insufficient_data",
        "drifted": False,
        "score": None,
        "threshold": drift.psi_threshold,
        "false_alarm_rate": drift.false_alarm_rate,
        "rows": rows_used,
        "features": {f: {"psi": None, "drifted": False, "reason": None} for f in features},
        "failed_expectations": [],
        "problems": problems,
        "versions": {str(v): c for v, c in version_rows.items()},
        "per_version": {
            v: {"rows": s["rows"], "score": s["score"], "psi": s["psi"], "tests": judged.get(v)}
            for v, s in per_version.items()
        },
        "pushed": False,
        "result_uri": str((out / RESULT_FILE).resolve()),
        "validation_uri": None,
        "model_name": name,
        "window_start": as_utc(window_start).isoformat(),
        "window_end": as_utc(window_end).isoformat(),
    }
    validation: dict[str, Any] | None = None
    if not per_version:
        problems.insert(
            0,
            f"insufficient data: {rows_used} usable logged rows of {name} in the window "
            f"(drift needs at least {drift.min_rows} from one version with a training reference)",
        )
    else:
        # Plots and GX use the version that served most rows; the scores and tests cover every scored version.
        primary = max(per_version, key=lambda v: per_version[v]["rows"])
        primary_scores, primary_ref = per_version[primary], references[int(primary)]
        result["primary_version"] = int(primary)
        for feature in features:
            entry = result["features"][feature]
            entry.update(_feature_decision(feature, per_version, judged, drift.psi_threshold, drift.false_alarm_rate))
            entry.update(_feature_detail(primary_scores, primary_ref, feature))
            absent = sum(s["rows"] - s["present"][feature] for s in per_version.values())
            if absent:
                entry.update(drifted=True, reason=f"{MISSING_REASON} ({absent} of {rows_used} rows lack it)")
        selected = window.versions == int(primary)
        sample_rows = window.rows if selected.all() else window.rows[selected]
        # A feature missing from some rows is already reported; GX judges the features every row carries.
        present = [f for f in features if not (result["features"][f]["reason"] or "").startswith(MISSING_REASON)]
        validation, failures = validate_sample(sample_rows, features, present, primary_ref, drift)
        result["validated_rows"] = validation["meta"]["validated_rows"]
        result["validation_sampled"] = validation["meta"]["sampled"]
        # Recorded beside the decision: GX's fixed tolerances have no known false-alarm rate.
        result["failed_expectations"].extend(line for _, line in failures)
        scored = [e["psi"] for e in result["features"].values() if e["psi"] is not None]
        result["score"] = max(scored) if scored else None
        result["drifted"] = any(e["drifted"] for e in result["features"].values())
        result["validation_uri"] = str((out / VALIDATION_FILE).resolve())

    if pushgateway_url:
        try:
            push_drift(pushgateway_url, name, result, time.time())
            result["pushed"] = True
        except PushError as exc:
            log.warning("%s; the drift result is still written to %s", exc, result["result_uri"])
            problems.append(str(exc))

    out.mkdir(parents=True, exist_ok=True)
    if validation is not None:
        artifacts.atomic_write_json(out / VALIDATION_FILE, validation)
    artifacts.atomic_write_json(out / RESULT_FILE, artifacts.to_jsonable(result))
    log.info(
        "drift of %s: status %s, drifted %s, score %s over %d rows (%s)",
        name, result["status"], result["drifted"], result["score"], rows_used, result["result_uri"],
    )  # fmt: skip
    return result


# What a feature's entry keeps in the step's result (its XCom); drift.json keeps the bins and shares too.
SUMMARY_FEATURE_KEYS = ("psi", "drifted", "reason", "test", "p_adjusted")
SUMMARY_KEYS = (
    "status", "drifted", "score", "threshold", "false_alarm_rate", "rows", "versions", "primary_version", "failed_expectations",
    "problems", "pushed", "result_uri", "validation_uri", "validated_rows", "validation_sampled",
    "model_name", "window_start", "window_end",
)  # fmt: skip


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The step's small JSON result: ``result`` without the per-feature bins (those stay in drift.json).

    The digits model's 64 features with their bins and shares would make the
    XCom tens of KB; the report reads them back from ``result_uri``.
    """
    short = {key: result[key] for key in SUMMARY_KEYS if key in result}
    short["features"] = {
        name: {key: entry.get(key) for key in SUMMARY_FEATURE_KEYS} for name, entry in result["features"].items()
    }
    return short


def full_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with the per-feature detail of its ``drift.json``, when it is a summary whose file exists."""
    uri = result.get("result_uri")
    if uri:
        uri = artifact_store.localized(str(uri))  # a URI on object storage: pulled into this mirror
    if uri and Path(uri).is_file():
        return artifacts.read_json(uri)
    return dict(result)


def _reference_of(registry: ModelRegistry, name: str, version: int) -> dict[str, Any] | None:
    return read_reference(artifact_store.local_version_dir(registry, name, version))


def _feature_decision(
    feature: str,
    per_version: Mapping[str, Mapping[str, Any]],
    judged: Mapping[str, Mapping[str, Mapping[str, Any]]],
    psi_threshold: float,
    false_alarm_rate: float,
) -> dict[str, Any]:
    """One feature's effect sizes (the largest over versions) and decision (the strongest test over versions)."""
    psis = [s["psi"][feature] for s in per_version.values() if s["psi"][feature] is not None]
    outside = [s["out_of_range"][feature] for s in per_version.values() if s["out_of_range"][feature] is not None]
    entry: dict[str, Any] = {
        "psi": max(psis) if psis else None,
        "out_of_range": max(outside) if outside else None,
        "drifted": False,
        "reason": None,
        "test": None,
        "statistic": None,
        "p_value": None,
        "p_adjusted": None,
    }
    tested = [(v, by_feature[feature]) for v, by_feature in judged.items() if by_feature[feature]["test"]]
    if tested:
        version, strongest = min(tested, key=lambda item: item[1]["p_adjusted"])
        entry.update({key: strongest[key] for key in ("test", "statistic", "p_value", "p_adjusted")})
        if strongest["drifted"]:
            entry.update(
                drifted=True,
                reason=f"{strongest['test']} statistic {strongest['statistic']:.3g}, Holm-adjusted p "
                f"{strongest['p_adjusted']:.2g} <= false_alarm_rate {false_alarm_rate} (version {version})",
            )
    for version, scores in per_version.items():
        psi = scores["psi"][feature]
        if version not in judged and psi is not None and psi > psi_threshold and not entry["drifted"]:
            entry.update(drifted=True, reason=f"PSI {psi:.3f} > threshold {psi_threshold} (version {version})")
    return entry


def _feature_detail(scores: Mapping[str, Any], reference: Mapping[str, Any], feature: str) -> dict[str, Any]:
    """What the report plots for one feature: bins and shares of the primary version (no raw data)."""
    stats = reference["features"][feature]
    return {
        "kind": stats.get("kind"),
        "bin_edges": stats["bin_edges"],
        "reference_weights": stats["bin_weights"],
        "current_weights": scores["current_weights"][feature],
        "reference_mean": stats["mean"],
        "current_mean": scores["mean"][feature],
        "reference_range": [stats["min"], stats["max"]],
        "current_range": [scores["min"][feature], scores["max"][feature]],
    }
