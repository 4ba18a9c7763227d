"""benchmarks/test_suite.py reads a pytest JUnit report: wall, serial sum, outcomes, slowest tests and modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import test_suite

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="100.0">
<testcase classname="tests.e2e.test_stack" name="test_a" time="60.0"/>
<testcase classname="tests.e2e.test_stack" name="test_b" time="30.0"><failure message="x"/></testcase>
<testcase classname="tests.unit.test_things.TestGroup" name="test_c" time="20.0"/>
<testcase classname="tests.unit.test_things" name="test_d" time="5.0"><skipped message="no"/></testcase>
<testcase classname="tests.unit.test_other" name="test_e" time="0.5"><error message="boom"/></testcase>
</testsuite></testsuites>
"""


@pytest.fixture
def report(tmp_path: Path) -> Path:
    path = tmp_path / "report.xml"
    path.write_text(REPORT)
    return path


def test_summary_of_a_report(report: Path) -> None:
    summary = test_suite.summarise(report)
    assert summary["wall_s"] == 100.0
    assert summary["sum_of_test_times_s"] == 115.5
    assert summary["parallel_speedup"] == 1.16  # 115.5 / 100
    assert summary["outcomes"] == {"passed": 2, "failed": 1, "error": 1, "skipped": 1}
    assert [t["test"] for t in summary["slowest_tests"][:2]] == [
        "tests.e2e.test_stack::test_a",
        "tests.e2e.test_stack::test_b",
    ]
    # A test class belongs to its module.
    assert summary["slowest_modules"] == [
        {"module": "tests.e2e.test_stack", "s": 90.0},
        {"module": "tests.unit.test_things", "s": 25.0},
        {"module": "tests.unit.test_other", "s": 0.5},
    ]


def test_a_wall_time_measured_around_the_run_wins_over_the_report(report: Path) -> None:
    assert test_suite.summarise(report, wall_s=50.0)["parallel_speedup"] == 2.31


def test_record_writes_the_result_file(report: Path, tmp_path: Path) -> None:
    test_suite.record(report, tmp_path / "results")
    written = json.loads((tmp_path / "results" / "test_suite.json").read_text())
    assert written["benchmark"] == "test_suite" and written["tests"] == 5


def test_a_file_that_is_no_report_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_text("<testsuites/>")
    with pytest.raises(ValueError, match="no <testsuite>"):
        test_suite.summarise(empty)
