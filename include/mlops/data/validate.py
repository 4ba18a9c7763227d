"""The validate step: run the model's Great Expectations suite on a snapshot.

The suite is data (``include/gx/<model>.json``, written once by
:mod:`include.mlops.data.suites` and reviewed like code).  It runs with an
ephemeral GX 1.x context on a pandas dataframe asset, so validation needs no
GX project folder, no store and no network.

Whether the data passes or not, ``out/validation.json`` keeps GX's full
result and ``out/summary.json`` a short one; the run folder is the evidence a
data engineer opens when a nightly run stops here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.data.sources import ROW_HASH_COLUMN, data_columns, row_hashes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RESULT_FILE",
    "SUMMARY_FILE",
    "DataValidationError",
    "describe_failure",
    "extra_columns",
    "load_suite",
    "validate",
]

log = logging.getLogger(__name__)

RESULT_FILE = "validation.json"
SUMMARY_FILE = "summary.json"
_MAX_SHOWN_VALUES = 5


class DataValidationError(RuntimeError):
    """The snapshot failed its expectation suite.  The message lists each failed expectation, one per line."""

    def __init__(self, model: str, failures: list[str], evaluated: int, rows: int, data_uri: str, result_uri: str):
        self.model = model
        self.failures = failures
        self.evaluated = evaluated
        self.rows = rows
        self.data_uri = data_uri
        self.result_uri = result_uri
        header = (
            f"data validation failed for model {model!r}: {len(failures)} of {evaluated} expectations failed "
            f"on {rows} rows of {data_uri} (full result: {result_uri})"
        )
        super().__init__("\n".join([header, *failures]))


class SuiteNotFoundError(FileNotFoundError):
    """A model has no expectation suite yet."""


def load_suite(config: ModelConfig) -> dict[str, Any]:
    """The model's suite as stored (``config.suite_path``): ``{"name", "meta", "expectations": [...]}``."""
    path = config.suite_path
    if not path.is_file():
        raise SuiteNotFoundError(
            f"model {config.name!r} has no expectation suite at {path}; "
            f"generate one with: python -m include.mlops.data.suites {config.name} [--data REFERENCE.parquet]"
        )
    suite = json.loads(path.read_text())
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"{path}: not a GX suite (expected an object with an 'expectations' list)")
    return suite


def _read_snapshot(data_uri: str | Path) -> pd.DataFrame:
    import fsspec
    import pandas as pd

    fs, path = fsspec.core.url_to_fs(str(data_uri))
    if not fs.exists(path):
        raise FileNotFoundError(f"snapshot {data_uri} does not exist: run the snapshot step for this run first")
    with fs.open(path, "rb") as handle:
        return pd.read_parquet(handle)


def extra_columns(data_uri: str | Path) -> list[str]:
    """Source columns the snapshot left out because the config does not list them.

    Read from the snapshot's manifest beside ``data_uri``; an empty list when
    there is no manifest (a file validated on its own).
    """
    import fsspec

    from include.mlops.data.snapshot import MANIFEST_FILE

    fs, path = fsspec.core.url_to_fs(str(data_uri))
    manifest_path = f"{path.rsplit('/', 1)[0]}/{MANIFEST_FILE}" if "/" in path else MANIFEST_FILE
    if not fs.exists(manifest_path):
        return []
    with fs.open(manifest_path, "rb") as handle:
        manifest = json.load(handle)
    return [str(c) for c in manifest.get("extra_columns") or []]


# --------------------------------------------------------------------------- describing failures


def _short(value: Any) -> str:
    if value is None:
        # GX reports no observation for aggregates of an empty or unreadable column.
        return "nothing"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_short(v) for v in value[:_MAX_SHOWN_VALUES])
        more = f", ... ({len(value)} in all)" if len(value) > _MAX_SHOWN_VALUES else ""
        return f"[{shown}{more}]"
    return str(value)


def _expected(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None or high is not None:
        if low is not None and high is not None:
            return f"expected between {_short(low)} and {_short(high)}"
        return f"expected >= {_short(low)}" if low is not None else f"expected <= {_short(high)}"
    if "type_" in kwargs:
        return f"expected {kwargs['type_']}"
    if "value_set" in kwargs:
        return f"expected values in {_short(list(kwargs['value_set']))}"
    if "threshold" in kwargs:
        return f"expected < {_short(kwargs['threshold'])}"
    return ""


def describe_failure(result: dict[str, Any], columns: Iterable[str] | None = None) -> str:
    """One line for one failed expectation result (a dict from GX's ``to_json_dict``).

    e.g. ``expect_column_values_to_not_be_null(bmi): 3 unexpected (0.71%)``.
    ``columns`` (the validated frame's) lets a check on a missing column say
    so, instead of quoting whichever internal error GX raised for it.
    """
    config = result.get("expectation_config") or {}
    kind = config.get("type", "expectation")
    kwargs = config.get("kwargs") or {}
    target = kwargs.get("column") or ", ".join(kwargs.get("column_list") or []) or "table"
    head = f"{kind}({target})"
    expected = _expected(kwargs)
    suffix = f"; {expected}" if expected else ""

    column = kwargs.get("column")
    if column is not None and columns is not None and column not in set(columns):
        return f"{head}: column is missing"

    exception = result.get("exception_info") or {}
    # GX keeps one record per failed metric, or a single flat record.
    records = [exception] if "raised_exception" in exception else list(exception.values())
    messages = [r.get("exception_message") for r in records if isinstance(r, dict) and r.get("raised_exception")]
    if messages:
        return f"{head}: could not be evaluated: {messages[0]}"

    outcome = result.get("result") or {}
    if outcome.get("unexpected_count"):
        sample = outcome.get("partial_unexpected_list") or []
        shown = f", e.g. {_short(sample)}" if sample and any(v is not None for v in sample) else ""
        return f"{head}: {outcome['unexpected_count']} unexpected ({outcome.get('unexpected_percent', 0.0):.2f}%){shown}{suffix}"
    mismatched = (outcome.get("details") or {}).get("mismatched")
    if kind == "expect_table_columns_to_match_set" and isinstance(mismatched, dict):
        parts = [
            f"{key} {_short(sorted(map(str, mismatched[key])))}"
            for key in ("missing", "unexpected")
            if mismatched.get(key)
        ]
        return f"{head}: {'; '.join(parts) or 'column set differs'}"
    if "observed_value" in outcome:
        return f"{head}: observed {_short(outcome['observed_value'])}{suffix}"
    if kind == "expect_column_to_exist":
        return f"{head}: column is missing"
    return f"{head}: failed{suffix}"


def _identity(expectation: dict[str, Any]) -> tuple[str, str]:
    # GX echoes kwargs back normalised (ints as floats, batch_id added), so
    # results are matched to the suite by expectation type and target only.
    kwargs = expectation.get("kwargs") or {}
    target = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
    return str(expectation.get("type")), str(target)


def _ordered_like_suite(results: list[dict[str, Any]], suite: dict[str, Any]) -> list[dict[str, Any]]:
    """Failed results in suite order: schema problems first, as the suites list them first."""
    position = {_identity(e): i for i, e in reversed(list(enumerate(suite["expectations"])))}
    return sorted(results, key=lambda r: position.get(_identity(r.get("expectation_config") or {}), len(position)))


# --------------------------------------------------------------------------- running GX


def run_suite(frame: pd.DataFrame, suite: dict[str, Any]) -> dict[str, Any]:
    """Validate ``frame`` against ``suite`` with an ephemeral GX context; GX's result as a JSON-able dict."""
    # GX would otherwise try to send usage statistics (there is no network on
    # workers) and draw progress bars into the task log.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        # GX logs its own start-up at INFO, hundreds of lines per task log.
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("data")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    expectation_suite = gx.ExpectationSuite(
        name=suite.get("name", "suite"),
        expectations=[
            {"type": e["type"], "kwargs": e.get("kwargs", {}), "meta": e.get("meta", {})} for e in suite["expectations"]
        ],
        meta=suite.get("meta", {}),
    )
    result = batch.validate(expectation_suite, result_format="SUMMARY")
    return artifacts.to_jsonable(result.to_json_dict())


def validate(config: ModelConfig, data_uri: str | Path, out: str | Path) -> dict:
    """Run ``config``'s expectation suite on the snapshot at ``data_uri``; write the result under ``out``.

    Returns ``{"success": True, "result_uri", "summary_uri", "evaluated", "rows"}``.
    Raises :class:`DataValidationError` listing each failed expectation after
    writing ``validation.json`` and ``summary.json`` all the same.
    """
    suite = load_suite(config)
    frame = _read_snapshot(data_uri)
    rows = len(frame)
    log.info(
        "validating %s: %d rows, %d columns against %d expectations",
        data_uri,
        rows,
        len(frame.columns),
        len(suite["expectations"]),
    )
    # Duplicates are judged on the data columns only: the split is derived from them.
    frame[ROW_HASH_COLUMN] = row_hashes(frame, data_columns(config))

    # Not a failure (the snapshot holds what the config lists), but worth a look:
    # a renamed feature shows up here as one missing and one extra column.
    extras = extra_columns(data_uri)
    if extras:
        log.warning(
            "the source of %s held columns %s that the config does not list; the snapshot left them out",
            config.name,
            extras,
        )

    result = run_suite(frame, suite)
    failed = _ordered_like_suite([r for r in result["results"] if not r.get("success")], suite)
    failures = [describe_failure(r, frame.columns) for r in failed]
    stats = result.get("statistics", {})
    evaluated = int(stats.get("evaluated_expectations", len(result["results"])))
    success = bool(result.get("success")) and not failures

    out = Path(out)
    result_uri = str((out / RESULT_FILE).resolve())
    summary_uri = str((out / SUMMARY_FILE).resolve())
    result.setdefault("meta", {}).update(
        {"model": config.name, "data_uri": str(data_uri), "rows": rows, "extra_columns": extras}
    )
    summary = {
        "model": config.name,
        "suite": str(config.suite_path),
        "data_uri": str(data_uri),
        "rows": rows,
        "success": success,
        "evaluated": evaluated,
        "successful": evaluated - len(failures),
        "failed": failures,
        "extra_columns": extras,
    }
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / RESULT_FILE, result)
        artifacts.atomic_write_json(staging / SUMMARY_FILE, summary)

    if not success:
        error = DataValidationError(config.name, failures, evaluated, rows, str(data_uri), result_uri)
        log.error("%s", error)
        raise error
    log.info("validation of %s passed: %d expectations on %d rows (%s)", config.name, evaluated, rows, result_uri)
    return {
        "success": True,
        "result_uri": result_uri,
        "summary_uri": summary_uri,
        "evaluated": evaluated,
        "rows": rows,
        "extra_columns": extras,
    }
