"""What the Models view shows of a model and of each of its versions (:class:`~include.mlops.registry.catalog.Catalog`'s records)."""

from __future__ import annotations

import dataclasses
from typing import Any

from include.mlops.registry.run_folders import Decision, RunRecord, as_dict


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
