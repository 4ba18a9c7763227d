"""Which runs may deploy: backfills never, runs with skip_deploy never, the rest yes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.api.datamodels._generated import DagRunType

from mlops_airflow.gate_operators import is_deploying_run, run_type


@pytest.mark.parametrize(
    ("kind", "skip_deploy", "deploys"),
    [
        (DagRunType.BACKFILL, False, False),
        (DagRunType.BACKFILL, True, False),
        (DagRunType.SCHEDULED, False, True),
        (DagRunType.MANUAL, False, True),
        (DagRunType.MANUAL, True, False),
        ("backfill", False, False),
    ],
)
def test_only_scheduled_and_manual_runs_deploy(kind, skip_deploy: bool, deploys: bool) -> None:
    context = {"dag_run": SimpleNamespace(run_type=kind), "params": {"skip_deploy": skip_deploy}}
    allowed, why = is_deploying_run(context)
    assert allowed is deploys
    assert bool(why) is not deploys
    if kind == DagRunType.BACKFILL:
        assert "backfill" in why


def test_run_type_is_the_plain_value() -> None:
    assert run_type(SimpleNamespace(run_type=DagRunType.BACKFILL)) == "backfill"
    assert str(DagRunType.BACKFILL) != "backfill"  # why run_type() exists
