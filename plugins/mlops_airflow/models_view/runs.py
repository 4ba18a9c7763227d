"""The lifecycle DAG runs as Airflow's metadata DB knows them (run ids, types, states, dates)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from sqlalchemy import func, select

from include.mlops.artifacts import safe_segment


@dataclasses.dataclass(frozen=True)
class AirflowRun:
    dag_id: str
    run_id: str
    run_type: str
    state: str
    when: dt.datetime | None

    @property
    def folder(self) -> str:
        """The run's folder name under ``runs/<dag_id>/`` (see :func:`include.mlops.artifacts.run_dir`)."""
        return safe_segment(self.run_id)


# Only the columns shown, not whole DagRun objects: a model has a run a night, plus manual runs and backfills.
_COLUMNS = (DagRun.dag_id, DagRun.run_id, DagRun.run_type, DagRun.state, DagRun.logical_date, DagRun.run_after)


def _run(row: Any) -> AirflowRun:
    # The logical date (the date in the run id, as for run folders the DB does not know), else when it was due.
    when = row.logical_date or row.run_after
    return AirflowRun(row.dag_id, row.run_id, _plain(row.run_type), _plain(row.state), when)


def _plain(value: object) -> str:
    """An enum's value (``"backfill"``), not its repr (``"DagRunType.BACKFILL"``)."""
    return str(getattr(value, "value", value))


def runs_of(dag_id: str) -> dict[str, AirflowRun]:
    """Every run of ``dag_id`` by folder name."""
    with create_session() as session:
        rows = session.execute(select(*_COLUMNS).where(DagRun.dag_id == dag_id)).all()
        return {run.folder: run for run in map(_run, rows)}


def last_runs(dag_ids: Iterable[str]) -> dict[str, AirflowRun]:
    """The latest run (by ``run_after``) of each DAG that has one."""
    dag_ids = list(dag_ids)
    if not dag_ids:
        return {}
    latest = (
        select(DagRun.dag_id, func.max(DagRun.run_after).label("run_after"))
        .where(DagRun.dag_id.in_(dag_ids))
        .group_by(DagRun.dag_id)
        .subquery()
    )
    with create_session() as session:
        rows = session.execute(
            select(*_COLUMNS).join(
                latest, (DagRun.dag_id == latest.c.dag_id) & (DagRun.run_after == latest.c.run_after)
            )
        ).all()
        return {run.dag_id: run for run in map(_run, rows)}
