"""The README's benchmark tables quote ``benchmarks/results/*.json``: the same run, at the printed precision.

Each figure printed in a table cell is compared with the result file's value, rounded as printed: ``1.62 ms``
must be within 0.005 of the file's value, ``202,000`` within 500.  ``make bench`` rewrites the files, so a
rerun without updating the README fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from markdown_blocks import README, ROOT, tables_after

RESULTS = ROOT / "benchmarks" / "results"
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?")

Value = Callable[[dict[str, Any]], float]


@cache
def result(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


@cache
def table(marker: str) -> list[list[str]]:
    return tables_after(README.read_text(encoding="utf-8"), marker)


def numbers(cell: str) -> list[str]:
    return _NUMBER.findall(cell.replace("**", ""))


def agrees(printed: str, value: float) -> bool:
    """Whether ``value`` rounds to the printed figure (its decimals, or its trailing zeros for whole numbers)."""
    digits = printed.replace(",", "").lstrip("+")
    if "." in digits:
        tolerance = 0.5 * 10 ** -len(digits.split(".")[1])
    else:
        magnitude = digits.lstrip("-")
        zeros = len(magnitude) - len(magnitude.rstrip("0")) if magnitude.strip("0") else 0
        tolerance = 0.5 * 10**zeros
    return abs(float(digits) - value) <= tolerance + 1e-9


def labels_row(cell: str, label: str) -> bool:
    """Whether a table's first cell is the row ``label`` names: the whole cell, or the cell up to a comment."""
    return cell == label or (bool(label) and cell.startswith(label + " "))


def check_row(marker: str, row_label: str, expected: dict[int, list[Value]], source: str) -> None:
    rows = [row for row in table(marker) if labels_row(row[0], row_label)]
    assert len(rows) == 1, f"one row {row_label!r} in the table after {marker!r}, found {len(rows)}"
    row = rows[0]
    data = result(source)
    for column, values in expected.items():
        printed = numbers(row[column])
        assert len(printed) >= len(values), f"{row_label!r} column {column}: {row[column]!r} lacks figures"
        for figure, value in zip(printed, values, strict=False):
            assert agrees(figure, value(data)), (
                f"README {marker} / {row_label!r}: {row[column]!r} prints {figure}, {source}.json has {value(data)}"
            )


# --------------------------------------------------------------------------------------------- serving

SERVING_CASES = [(1, 1), (1, 8), (32, 1), (32, 8)]


@pytest.mark.parametrize(("batch", "clients"), SERVING_CASES)
def test_serving_table(batch: int, clients: int) -> None:
    rows = [row for row in table("**Serving**") if row[:2] == [str(batch), str(clients)]]
    assert len(rows) == 1, f"one serving row for batch {batch}, {clients} clients"
    row = rows[0]
    case = result("serving")["http"][f"batch_{batch}_clients_{clients}"]
    figures = [
        (row[2], [case["p50_ms"]]),
        (row[3], [case["p99_ms"]]),
        (row[4], [case["requests_per_s"], case["rows_per_s"]]),
        (row[5], [case["ratio_p50_vs_bare_model"]]),
    ]
    for cell, values in figures:
        printed = numbers(cell)
        assert len(printed) == len(values), cell
        for figure, value in zip(printed, values, strict=True):
            assert agrees(figure, value), f"serving batch {batch}, {clients} clients: {cell!r} vs {value}"


def test_serving_table_has_every_case() -> None:
    cases = {(int(row[0]), int(row[1])) for row in table("**Serving**")}
    assert cases == {tuple(key) for key in SERVING_CASES}
    assert {f"batch_{b}_clients_{c}" for b, c in SERVING_CASES} == set(result("serving")["http"])


def test_serving_prose() -> None:
    text = README.read_text(encoding="utf-8")
    data = result("serving")
    bare = re.search(r"p50 ([\d.]+) ms for 1 row,\s+([\d.]+) ms for 32 rows", text)
    assert bare, "the serving paragraph quotes the bare model's p50"
    assert agrees(bare.group(1), data["bare_model"]["batch_1"]["p50_ms"])
    assert agrees(bare.group(2), data["bare_model"]["batch_32"]["p50_ms"])
    overhead = re.search(
        r"batch 32 with one client: ([\d.]+) µs per row; at batch 1 it is ([\d.]+) ms per request", text
    )
    assert overhead, "the serving paragraph quotes the overhead"
    assert agrees(overhead.group(1), data["overhead_per_row_us_at_batch_32"])
    assert agrees(overhead.group(2), data["overhead_per_request_ms_at_batch_1"])


def test_serving_references() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())  # the paragraph's line breaks as spaces
    data = result("serving")
    fixed = data["references"]["uvicorn_fixed_answer"]
    minimal = data["references"]["minimal_model_app"]
    quoted = re.search(r"answers a fixed body, with no model, answers in ([\d.]+) ms at batch 1", text)
    assert quoted, "the serving section quotes the fixed-answer reference"
    assert agrees(quoted.group(1), fixed["http"]["batch_1_clients_1"]["p50_ms"])
    quoted = re.search(
        r"answers in ([\d.]+) ms at batch 1, ([\d.]+) ms over the bare model \(and ([\d.]+) ms at batch 32, "
        r"([\d.]+) µs a row over it\)",
        text,
    )
    assert quoted, "the serving section quotes the minimal app"
    expected = [
        minimal["http"]["batch_1_clients_1"]["p50_ms"],
        minimal["overhead_per_request_ms_at_batch_1"],
        minimal["http"]["batch_32_clients_1"]["p50_ms"],
        minimal["overhead_per_row_us_at_batch_32"],
    ]
    for figure, value in zip(quoted.groups(), expected, strict=True):
        assert agrees(figure, value), f"minimal app: {figure} vs {value}"
    quoted = re.search(r"adds ([\d.]+) ms to that floor at batch 1", text)
    assert quoted, "the serving section quotes the server's own share"
    own = data["overhead_per_request_ms_at_batch_1"] - minimal["overhead_per_request_ms_at_batch_1"]
    assert agrees(quoted.group(1), own)


# --------------------------------------------------------------------------------------------- the others

DRIFT_METHODS = ("project", "evidently_defaults", "ks_bonferroni")


def drift_cell(model: str, size: str, shift: str | None) -> list[Value]:
    """The percentages a drift-quality cell prints: clean windows flagged, or a shift detected, per method."""

    def rate(method: str) -> Value:
        def value(d: dict[str, Any]) -> float:
            cells = d["models"][model]["clean"] if shift is None else d["models"][model]["shifted"][shift]
            return cells[size]["rates"][method] * 100

        return value

    return [rate(method) for method in DRIFT_METHODS]


ROWS = [
    # (table marker, row label, {column: [values]}, result file)
    ("**Spine**", "parse `dags/lifecycle.py`", {
        1: [lambda d: d["parse"]["files"]["lifecycle.py"]["median_s"] * 1000],
        2: [lambda d: d["parse"]["trivial_dag_median_s"] * 1000],
        3: [lambda d: d["parse"]["files"]["lifecycle.py"]["ratio_to_trivial"]],
    }, "spine"),
    ("**Spine**", "parse `dags/monitor.py`", {
        1: [lambda d: d["parse"]["files"]["monitor.py"]["median_s"] * 1000],
        2: [lambda d: d["parse"]["trivial_dag_median_s"] * 1000],
        3: [lambda d: d["parse"]["files"]["monitor.py"]["ratio_to_trivial"]],
    }, "spine"),
    ("**Spine**", "parse `dags/rollback.py`", {
        1: [lambda d: d["parse"]["files"]["rollback.py"]["median_s"] * 1000],
        2: [lambda d: d["parse"]["trivial_dag_median_s"] * 1000],
        3: [lambda d: d["parse"]["files"]["rollback.py"]["ratio_to_trivial"]],
    }, "spine"),
    ("**Spine**", "one lifecycle run through the scheduler", {
        1: [lambda d: d["orchestration"]["airflow_median_s"]],
        2: [lambda d: d["orchestration"]["in_process_median_s"]],
        3: [lambda d: d["orchestration"]["overhead_ratio"]],
    }, "spine"),
    ("**Parse cost per model**", "lifecycle DAG (build only)", {
        1: [lambda d: d["ms_per_dag"]["lifecycle"]],
        2: [lambda d: d["ratios"]["lifecycle_to_empty_params"]],
        3: [lambda d: d["calls_per_dag"]["lifecycle"],
            lambda d: d["calls_per_dag"]["lifecycle"] / d["calls_per_dag"]["empty_params"]],
    }, "parse"),
    ("**Parse cost per model**", "`EmptyOperator` DAG with the same Params", {
        1: [lambda d: d["ms_per_dag"]["empty_params"]],
        3: [lambda d: d["calls_per_dag"]["empty_params"]],
    }, "parse"),
    ("**Parse cost per model**", "`EmptyOperator` DAG without Params", {
        1: [lambda d: d["ms_per_dag"]["empty"]],
        2: [lambda d: d["ms_per_dag"]["empty"] / d["ms_per_dag"]["empty_params"]],
        3: [lambda d: d["calls_per_dag"]["empty"]],
    }, "parse"),
    ("**Parse cost per model**", "reading the model config", {1: [lambda d: d["ms_per_dag"]["config_load"]]}, "parse"),
    ("**Parse cost per model**", "the whole DAG file, per model", {1: [lambda d: d["ms_per_dag"]["dag_file"]]}, "parse"),
    ("**Monitoring**", "drift scoring", {
        1: [lambda d: d["drift_scoring_s"], lambda d: d["drift_rows_per_s"] / 1e6],
        2: [lambda d: d["pandas_same_statistics_s"]],
        3: [lambda d: d["ratio_pandas_to_scoring"]],
    }, "monitoring"),
    ("**Monitoring**", "", {
        2: [lambda d: d["pandas_same_statistics_plus_quantiles_s"]],
        3: [lambda d: d["ratio_pandas_with_quantiles_to_scoring"]],
    }, "monitoring"),
    ("**Monitoring**", "full drift check", {
        1: [lambda d: d["full_check_s"], lambda d: d["full_check_rows_per_s"]],
    }, "monitoring"),
    ("**Monitoring**", "one monitoring run through the scheduler", {
        1: [lambda d: d["monitoring_run_wall_s"]],
        2: [lambda d: d["monitoring_run_in_process_s"]],
        3: [lambda d: d["monitoring_run_ratio"]],
    }, "monitoring"),
    *[
        ("**Drift quality**", f"{model}, {int(size):,} rows", {
            1: drift_cell(model, size, None),
            2: drift_cell(model, size, "0.25_sigma"),
            3: drift_cell(model, size, "0.5_sigma"),
            4: drift_cell(model, size, "1_sigma"),
        }, "drift_quality")
        for model in ("diabetes", "digits")
        for size in ("200", "1000", "5000")
    ],
    ("**Test suite**", "`make test` wall time", {1: [lambda d: d["wall_min"]]}, "test_suite"),
    ("**Test suite**", "sum of the tests' own times", {1: [lambda d: d["sum_of_test_times_s"] / 60]}, "test_suite"),
    ("**Test suite**", "tests", {
        1: [lambda d: d["tests"], lambda d: d["outcomes"]["passed"], lambda d: d["outcomes"]["skipped"]],
    }, "test_suite"),
    ("**Compose**", "start until every service is healthy", {
        1: [lambda d: d["compose"]["up_to_all_healthy_s"]],
        2: [lambda d: d["make_run"]["start_to_api_ready_s"]],
    }, "compose"),
    ("**Compose**", "one lifecycle run, triggered to success", {
        1: [lambda d: d["compose"]["lifecycle_run_s"]],
        2: [lambda d: d["make_run"]["lifecycle_run_s"]],
        3: [lambda d: d["lifecycle_run_compose_to_make_run_ratio"]],
    }, "compose"),
    *[
        ("**Containers**", step, {
            1: [lambda d, s=step: d["steps"][s]["local_median_s"]],
            2: [lambda d, s=step: d["steps"][s]["docker_median_s"]],
            3: [lambda d, s=step: d["steps"][s]["docker_to_local_ratio"]],
        }, "containers")
        for step in ("snapshot", "validate")
    ],
    *[
        ("**Object store**", label, {
            1: [lambda d, k=key: d["steps"][k]["local_median_s"]],
            2: [lambda d, k=key: d["steps"][k]["s3_median_s"]],
            3: [lambda d, k=key: d["steps"][k]["ratio_s3_over_local"]],
        }, "object_store")
        for label, key in (
            *((step, step) for step in ("snapshot", "validate", "train", "evaluate", "register")),
            ("deploy (label only)", "deploy"),
            ("whole lifecycle", "lifecycle"),
        )
    ],
    *[
        ("**Step startup**", label, {
            1: [lambda d, k=key: d["steps"][k]["wall_median_s"]],
            2: [lambda d, k=key: d["steps"][k]["imports_s"]],
            3: [lambda d, k=key: d["steps"][k]["tensorflow_imports_s"]],
            4: [lambda d, k=key: d["steps"][k]["great_expectations_imports_s"]],
            5: [lambda d, k=key: d["steps"][k]["other_imports_s"]],
            6: [lambda d, k=key: d["steps"][k]["startup_share_of_wall"]],
        }, "step_startup")
        for label, key in (
            *((step, step) for step in ("snapshot", "validate", "train", "evaluate", "register")),
            ("deploy (label only)", "deploy"),
        )
    ],
    *[
        ("**Per-step overhead**", label, {
            1: [lambda d, k=key: d["overhead"]["steps"][k]["in_process_s"]],
            2: [lambda d, k=key: d["overhead"]["steps"][k]["cold_wall_s"]],
            3: [lambda d, k=key: d["overhead"]["steps"][k]["warm_wall_s"]],
            4: [lambda d, k=key: d["overhead"]["steps"][k]["cold_overhead_s"]],
            5: [lambda d, k=key: d["overhead"]["steps"][k]["warm_overhead_s"]],
            6: [lambda d, k=key: d["overhead"]["steps"][k]["warm_to_cold_wall_ratio"]],
        }, "step_startup")
        for label, key in (
            *((step, step) for step in ("snapshot", "validate", "train", "evaluate", "register")),
            ("deploy (label only)", "deploy"),
        )
    ],
    *[
        ("**First run**", label, {
            1: [lambda d, k=key: d["variants"][k]["medians"]["ui_up_s"]],
            2: [lambda d, k=key: d["variants"][k]["medians"]["digits_available_s"]],
            3: [lambda d, k=key: d["variants"][k]["medians"]["diabetes_available_s"]],
            4: [lambda d, k=key: d["variants"][k]["medians"]["all_available_s"]],
            5: [lambda d, k=key: d["ratios_to_first_variant"].get(k, {"all_available_s": 1.0})["all_available_s"]],
        }, "first_run")
        for label, key in (("cold", "cold"), ("warm", "warm"))
    ],
    *[
        ("**Models view**", label, {
            1: [lambda d, k=key: d["timings"][k]["cold_ms"]],
            2: [lambda d, k=key: d["timings"][k]["warm_median_ms"]],
            3: [lambda d, k=key: d["timings"][k]["warm_vs_baseline"]],
        }, "ui")
        for label, key in (
            ("`/mlops/models`", "models_page"),
            ("`/mlops/models/diabetes` (the page)", "model_page"),
            ("`/mlops/api/models/diabetes`", "model_json"),
            ("the quality history PNG", "quality_history_png"),
        )
    ],
    *[
        ("**Optimize**", label, {
            1: [lambda d, k=key: d["variants"][k]["size_ratio"]],
            2: [lambda d, k=key: d["variants"][k]["speedup_1"]],
            3: [lambda d, k=key: d["variants"][k]["speedup_32"]],
            4: [lambda d, k=key: d["variants"][k]["metric_delta"]],
        }, "optimize")
        for label, key in (
            ("dynamic", "dynamic"),
            ("float16", "float16"),
            ("int8", "int8"),
            ("pruned", "pruned"),
            ("qat", "qat"),
        )
    ],
    ("**Optimize**", "float32 TFLite (reference)", {
        1: [lambda d: d["tflite_float32"]["size_ratio"]],
        2: [lambda d: d["tflite_float32"]["speedup_1"]],
        3: [lambda d: d["tflite_float32"]["speedup_32"]],
    }, "optimize"),
    *[
        ("**Serving A/B**", label, {
            1: [lambda d, k=key: d["cases"][k]["p50_ms"]["a"]],
            2: [lambda d, k=key: d["cases"][k]["p50_ms"]["b"]],
            3: [lambda d, k=key: d["cases"][k]["p50_ratio_b_over_a"]],
            4: [lambda d, k=key: d["cases"][k]["throughput_ratio_b_over_a_paired_median"]],
        }, "serving_ab")
        for label, key in (
            ("batch 1, 1 client", "batch_1_clients_1"),
            ("batch 1, 8 clients", "batch_1_clients_8"),
            ("batch 32, 1 client", "batch_32_clients_1"),
            ("batch 32, 8 clients", "batch_32_clients_8"),
        )
    ],
]  # fmt: skip


@pytest.mark.parametrize(
    ("marker", "row_label", "expected", "source"),
    ROWS,
    ids=[f"{m.strip('*')}: {label or '(continued)'}" for m, label, _, _ in ROWS],
)
def test_table_row(marker: str, row_label: str, expected: dict[int, list[Value]], source: str) -> None:
    check_row(marker, row_label, expected, source)


@pytest.mark.parametrize("marker", sorted({marker for marker, *_ in ROWS} | {"**Serving**"}))
def test_every_row_is_checked(marker: str) -> None:
    labels = [label for m, label, *_ in ROWS if m == marker]
    for row in table(marker):
        if marker == "**Serving**":
            continue
        assert any(labels_row(row[0], label) for label in labels), f"{marker}: no check for row {row[0]!r}"
