"""The canary's share of a model's stable traffic, and how to wait until the server applies it.

:class:`TrafficSplit` is what a progressive delivery needs from wherever the
split lives: read and set the percent of the requests addressed to a model's
``stable`` label that its ``canary`` label's version answers.  On Kubernetes
that is the weights of a Gateway API HTTPRoute
(``plugins/mlops_airflow/canary_route.py``); on the local model server it is
:class:`LocalRoute`, the file ``<registry root>/<model>/route.json``
(``{"canary_weight": 25}``), which the server reads on every poll of
``models.config`` (:mod:`include.mlops.serving.canary_weights`).

Setting 0 writes ``{"canary_weight": 0}`` rather than removing the file: one
atomic write for every weight, and the file keeps saying what was asked.  The
server treats a missing file as 0 too.

:meth:`LocalRoute.wait_applied` polls the server's Prometheus metrics until
``mlops_canary_weight{model_name=...}`` shows the weight, steadily; the server
applies a weight only while the model has a ``canary`` label on a loaded
version, and reports 0 otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from include.mlops import artifact_store, artifacts
from include.mlops.names import serving_name_problem
from include.mlops.serving.canary_weights import ROUTE_FILE, WEIGHT_KEY, check_weight, read_weight
from include.mlops.serving.metrics import CANARY_WEIGHT, METRICS_PATH

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1


class TrafficSplit(Protocol):
    """Where a model's stable/canary split is kept (percent of stable-addressed requests sent to canary)."""

    def canary_weight(self, name: str) -> int: ...

    def set_canary_weight(self, name: str, percent: int) -> None: ...


class RouteNotAppliedError(TimeoutError):
    """The model server did not report the asked canary weight (steadily) within the time allowed."""


class LocalRoute:
    """The local model server's split: ``route.json`` in each model's registry folder."""

    def __init__(self, registry_root: str | os.PathLike[str]) -> None:
        self.root = Path(registry_root)

    def route_file(self, name: str) -> Path:
        problem = serving_name_problem(name)
        if problem is not None:
            raise ValueError(f"model name {problem}")
        return self.root / name / ROUTE_FILE

    def canary_weight(self, name: str) -> int:
        """The weight the file sets: 0 without a file, and 0 (with a warning) when it is malformed, as the server reads it."""
        try:
            path = self.route_file(name)
            artifact_store.fetch(path)  # on S3: the route the bucket holds
            return read_weight(path)
        except ValueError as exc:
            log.warning("%s: canary route file ignored (weight 0): %s", name, exc)
            return 0

    def set_canary_weight(self, name: str, percent: int) -> None:
        """Set the canary's share of ``name``'s stable traffic (a whole percent, 0 to 100), atomically."""
        check_weight(percent)
        path = self.route_file(name)
        store = artifact_store.current()
        on_s3 = store is not None and store.relative(path) is not None
        # On S3 the model is in the bucket's registry and the servers' mirrors copy the route from there.
        if not (artifact_store.open_registry().versions(name) if on_s3 else path.parent.is_dir()):
            raise FileNotFoundError(f"no model {name!r} in the registry at {store.uri if on_s3 else self.root}")
        artifacts.atomic_write_json(path, {WEIGHT_KEY: percent})
        if on_s3:
            store.push(path)
        log.info("%s: canary weight set to %d%% in %s", name, percent, path)

    def wait_applied(
        self, server_url: str, name: str, percent: int, *, timeout_s: float = 30.0, steady_s: float = 1.0
    ) -> None:
        """Return once the server at ``server_url`` has applied ``percent`` for ``name`` for ``steady_s`` in a row.

        Raises :class:`RouteNotAppliedError` (a ``TimeoutError``) after ``timeout_s``, saying what it saw last.
        """
        check_weight(percent)
        deadline = time.monotonic() + timeout_s
        steady_since: float | None = None
        with httpx.Client(base_url=server_url.rstrip("/"), timeout=min(10.0, max(timeout_s, 0.1))) as client:
            while True:
                now = time.monotonic()
                seen = _applied_weight(client, name)
                if seen == percent:
                    steady_since = now if steady_since is None else steady_since
                    if now - steady_since >= steady_s:
                        return
                else:
                    steady_since = None
                if now >= deadline:
                    raise RouteNotAppliedError(
                        f"the model server at {server_url} did not apply a canary weight of {percent}% for "
                        f"{name!r} for {steady_s:g} s within {timeout_s:g} s (last seen: {seen}); it applies a "
                        f"weight only while the model has a 'canary' label on a loaded version"
                    )
                time.sleep(_POLL_SECONDS)


def _applied_weight(client: httpx.Client, name: str) -> int | str:
    """``mlops_canary_weight`` for ``name`` (0 when it has no series), or why the metrics could not be read."""
    try:
        response = client.get(METRICS_PATH)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return f"no metrics ({type(exc).__name__}: {exc})"
    for family in text_string_to_metric_families(response.text):
        if family.name == CANARY_WEIGHT:
            for sample in family.samples:
                if sample.labels.get("model_name") == name:
                    return int(sample.value)
    return 0
