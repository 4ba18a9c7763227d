"""The lifecycle DAG runs as Airflow's metadata DB knows them (run ids, types, states, dates)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

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


def _run(row: DagRun) -> AirflowRun:
    # The data the run covers: its interval's start, else its logical date, else when it was due.
    when = row.data_interval_start or row.logical_date or row.run_after
    return AirflowRun(row.dag_id, row.run_id, _plain(row.run_type), _plain(row.state), when)


def _plain(value: object) -> str:
    """An enum's value (``"backfill"``), not its repr (``"DagRunType.BACKFILL"``)."""
    return str(getattr(value, "value", value))


def runs_of(dag_id: str) -> dict[str, AirflowRun]:
    """Every run of ``dag_id`` by folder name."""
    with create_session() as session:
        rows = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).all()
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
        rows = session.scalars(
            select(DagRun).join(latest, (DagRun.dag_id == latest.c.dag_id) & (DagRun.run_after == latest.c.run_after))
        ).all()
        return {run.dag_id: run for run in map(_run, rows)}
