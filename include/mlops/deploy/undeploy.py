"""The undeploy step: take a label other than ``stable`` (a finished or aborted ``canary``) off a model.

Run under the model's deploy lock, after every unfinished move of the model
is repaired (as a deploy does).  The label leaves ``models.config`` by
compare-and-set and its version leaves the version policy unless another
label still names it; with a model server, the step waits until the label no
longer resolves there (TF Serving answers 404 for an unknown label), for one
config poll in a row.  A label that is already gone is not an error: a retry,
or the end of a canary that never started, changes nothing and says so.

``stable`` is refused (bad input): removing it takes the model out of
service.  Point it at another version with the deploy step or the
``rollback__<name>`` DAG instead.

Before a canary's label goes, its traffic share must be 0 (the route's weight,
:mod:`include.mlops.deploy.traffic_split`): a request the route still sends
to a removed label would fail.  The Airflow task that runs this step closes the
route first.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from include.mlops import artifact_store, artifacts
from include.mlops.config import ModelConfig
from include.mlops.deploy.errors import DeployError
from include.mlops.deploy.journal import deploy_lock, lease_for, unfinished_deploys
from include.mlops.deploy.rollback import repair_unfinished_deploy, restore_label
from include.mlops.deploy.server_client import ModelServerClient
from include.mlops.registry.label_log import label_move_context
from include.mlops.registry.protocol import ModelRegistry

log = logging.getLogger(__name__)

PROTECTED_LABEL = "stable"


class ProtectedLabelError(DeployError, ValueError):
    """The label may not be removed (``stable``): bad input, nothing moves."""


class LabelNotSettledError(DeployError):
    """The label left models.config, but the server has not confirmed it yet (a retry waits again)."""


def undeploy(
    config: ModelConfig,
    *,
    label: str,
    out: str | os.PathLike[str],
    server_url: str | None = None,
    timeout: float = 120.0,
    server_poll_seconds: float = 1.0,
    reason: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Remove ``label`` from ``config``'s model; returns ``{"label", "removed", "version", "verified"}``.

    ``version`` is the version the label named (None when it had none).
    Raises :class:`ProtectedLabelError` for ``stable``.
    """
    if label == PROTECTED_LABEL:
        raise ProtectedLabelError(
            f"label {PROTECTED_LABEL!r} is not removed: that would take {config.serving_name} out of service. "
            f"Point it at another version instead (the deploy step, or the rollback__{config.name} DAG)"
        )
    registry: ModelRegistry = artifact_store.open_registry()
    name = config.serving_name
    with contextlib.ExitStack() as stack:
        stack.enter_context(label_move_context(reason=reason or f"remove label {label}", requested_by=requested_by,
                                               task=str(out)))  # fmt: skip
        server = stack.enter_context(ModelServerClient(server_url, timeout=timeout)) if server_url else None
        wait_s = max(timeout, 60.0) * 5
        stack.enter_context(deploy_lock(registry.model_dir(name), wait_s=wait_s, lease_s=lease_for(config, "undeploy")))
        for unfinished in unfinished_deploys(registry.model_dir(name)):
            repair_unfinished_deploy(registry, server, unfinished, server_poll_seconds=server_poll_seconds)
        current = registry.label_version(name, label)
        if current is None:
            log.info("%s: label %r names no version; nothing to remove", name, label)
            result = {"label": label, "removed": False, "version": None, "verified": server is not None}
        else:
            said, settled = restore_label(
                registry, server, name, label, current, None, confirm=True, server_poll_seconds=server_poll_seconds
            )
            if not settled:
                raise LabelNotSettledError(f"{name}: {said}")
            log.info("%s: label %r (version %d) removed. %s", name, label, current, said)
            result = {"label": label, "removed": True, "version": current, "verified": server is not None}
    with artifacts.step_output(Path(out)) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**result, "model_name": name})
    return result
