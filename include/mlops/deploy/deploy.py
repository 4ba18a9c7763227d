"""The deploy step: move a serving label to a registered version, verified through the model server.

``deploy`` moves a label (``stable``, ``canary``) in TF Serving's model config
file after verifying the version's checksums, so a corrupted version is never
put into service.  With a model server it is a transaction, run while holding
the model's deploy lock (two deploys of one model run one after the other):

0. An unfinished move of any of the model's labels (its journal, see
   :mod:`include.mlops.deploy.journal`) is repaired first: the label goes back
   to the last verified version.
1. Everything that can fail without the server is done next, while the old
   version still serves: checksums, the served bytes against the bytes the
   gate measured (the lineage's ``measured_artifact``), the held-out smoke
   rows, and the expected answers of the artifact the server will load
   (``model.tflite`` when the version has one, else the SavedModel; see
   :mod:`include.mlops.registry.serving_artifact`).  Then, unless the
   model config's ``deploy.infra_validation`` is off, the version is loaded
   alone in a sandbox server and must answer the smoke rows there
   (:mod:`include.mlops.deploy.sandbox`); a version that another label
   already serves (a canary being promoted) answered through that label and
   is not loaded in a sandbox again.
2. The previous version is written to the label's journal,
   ``models/<name>/.deploy-<label>.journal.json``.
3. The version is loaded (added to the version policy, awaited until
   AVAILABLE for one config poll in a row, so every replica has it), and the
   label moves by compare-and-set (:meth:`ModelRegistry.move_label`) while
   the previous version stays in the policy, so that a roll back lands on a
   version the server has loaded (TF Serving refuses a label on an unloaded
   version).
4. Once the label answers with the version (its metadata through the server,
   for one config poll in a row), the answers through the label are compared
   with the expected ones; then the result is written, the journal removed,
   and only then does the previous version leave the policy.

Any exception in steps 3-4, SIGTERM included (the CLI turns it into
:class:`include.mlops.exit_codes.StepTerminated`), moves the label back (or
removes it if it was new, with the version: a failed first deploy leaves
nothing loaded) and waits until the label answers with the previous version
again (:mod:`include.mlops.deploy.rollback`).  A death there (SIGKILL, a lost
node) leaves the journal behind: the next deploy of the model, a retry or the
next run, and the champion lookup find it and put the label back first.

On an object-store artifact root (``MLOPS_ARTIFACT_ROOT=s3://...``) the
registry, the journal and the deploy lock are in the bucket
(:func:`include.mlops.artifact_store.open_registry`; the lock's lease is in
:mod:`include.mlops.deploy.journal`), and the checks that read the version's
files (served bytes, smoke answers, the sandbox) read its copy in the local
mirror (:func:`include.mlops.artifact_store.local_version_dir`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops import artifact_store, artifacts
from include.mlops.config import ModelConfig
from include.mlops.deploy.errors import DeployError, DeployVerificationError, ServedBytesError
from include.mlops.deploy.journal import deploy_lock, lease_for, remove_journal, unfinished_deploys, write_journal
from include.mlops.deploy.rollback import repair_unfinished_deploy, restore_label
from include.mlops.deploy.sandbox import infra_validate
from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError
from include.mlops.deploy.smoke import SmokeCheck, prepare_smoke_check, smoke_rows, verify_deployment
from include.mlops.registry.label_log import FAILED_DEPLOY_REASON, label_move_context
from include.mlops.registry.protocol import ModelRegistry, RegistryError
from include.mlops.registry.serving_artifact import served_artifact

__all__ = [
    "FAULT_AFTER_LABEL_MOVE_ENV",
    "DeployError",
    "DeployVerificationError",
    "ServedBytesError",
    "SmokeCheck",
    "deploy",
    "prepare_smoke_check",
    "smoke_rows",
    "verify_deployment",
]

log = logging.getLogger(__name__)

# Fault-injection point for tests only, right after the label moved and before it is verified (the worst
# moment to end): "sigkill" kills the process, "raise" raises, "hang" sleeps until it is stopped. A value
# "@<path>" reads the fault from that file (none when it is missing or empty). Never set it outside tests.
FAULT_AFTER_LABEL_MOVE_ENV = "MLOPS_TEST_FAULT_AFTER_LABEL_MOVE"
# The server reads models.config once per poll (TF Serving's --model_config_file_poll_wait_seconds: 1 s on the
# local server and in the compose file, 30 s in include/k8s/serving), so a label move is confirmed only after
# the answers agreed for that long; pass the server's interval as server_poll_seconds.
SERVER_POLL_SECONDS = 1.0


def deploy(
    config: ModelConfig,
    version: int,
    *,
    label: str = "stable",
    out: str | os.PathLike[str],
    server_url: str | None = None,
    timeout: float = 120.0,
    data_uri: str | os.PathLike[str] | None = None,
    tolerance: float = 1e-4,
    smoke_rows: int = 32,
    server_poll_seconds: float = SERVER_POLL_SECONDS,
    reason: str | None = None,
    requested_by: str | None = None,
    stable_first: bool = False,
) -> dict[str, Any]:
    """Verify ``version`` and point ``label`` at it; returns ``{"version", "previous", "label", "changed", "verified"}``.

    With ``server_url`` (TF Serving or the local server) the deploy is
    verified end to end: the version is loaded and awaited until AVAILABLE
    (TF Serving only labels loaded versions), the label moves, and held-out
    rows sent THROUGH THE LABEL must match the served artifact's offline
    answers (``rtol = atol = tolerance``).  On any failure the label goes back
    to the previous version and the error says so
    (:class:`DeployVerificationError` when the server answered wrongly).  The
    rows come from ``data_uri`` (a snapshot folder or parquet, or the evaluate
    step's ``predictions.parquet``; test-split rows when it has a ``split``
    column), else from the version's lineage ``data_uri``.

    ``server_poll_seconds`` is how often the server re-reads models.config
    (``--model_config_file_poll_wait_seconds``): loading and the label move
    count as done only once the answers agreed for that long in a row, so
    that every replica behind ``server_url`` has applied them.

    Raises :class:`ServedBytesError` (bad input) before anything moves when
    the version's served artifact is not the one its gate measured, and
    :class:`include.mlops.deploy.journal.DeployBusyError` when another deploy
    of the model holds its lock for too long.

    ``reason`` (why: "gate passed", "rollback: ...") and ``requested_by`` (who
    triggered the run) go into the model's audit log of label moves with the
    deploy's ``out`` folder (:mod:`include.mlops.registry.label_log`).

    ``stable_first``: when the model has no ``stable`` version yet, the
    version goes to ``stable`` instead of ``label`` (a canary needs a stable
    version to be compared with); the result's ``label`` says which.

    Without ``server_url`` only the label moves and the result says
    ``"verified": false``.  A retry after the label already moved changes
    nothing and reports the ``previous`` version recorded in ``out/result.json``.
    """
    out = Path(out)
    registry: ModelRegistry = artifact_store.open_registry()
    name = config.serving_name
    with contextlib.ExitStack() as stack:
        stack.enter_context(label_move_context(reason=reason or "deploy", requested_by=requested_by, task=str(out)))
        server = stack.enter_context(ModelServerClient(server_url, timeout=timeout)) if server_url else None
        wait_s = max(timeout, 60.0) * 5
        stack.enter_context(deploy_lock(registry.model_dir(name), wait_s=wait_s, lease_s=lease_for(config, "deploy")))
        # First, before anything can fail: a label left on an unverified version by an unfinished deploy goes back.
        for unfinished in unfinished_deploys(registry.model_dir(name)):
            repair_unfinished_deploy(registry, server, unfinished, server_poll_seconds=server_poll_seconds)
        if stable_first and label != "stable" and registry.label_version(name, "stable") is None:
            log.info("%s has no stable version yet, so version %d goes to stable, not %r", name, version, label)
            label = "stable"
        registry.verify(name, version)
        _check_gated_bytes(registry, name, version)
        # Built while the old version still serves: an error here (bad rows, a model TF cannot load) moves nothing.
        check = (
            prepare_smoke_check(config, artifact_store.local_version_dir(registry, name, version), data_uri, smoke_rows)
            if server is not None
            else None
        )
        settings = _Verification(server, check, tolerance, server_poll_seconds)
        current = registry.label_version(name, label)
        if current == version:
            earlier = _earlier_result(out, label, version)
            result = {
                "version": version,
                "previous": earlier["previous"] if earlier is not None else current,
                "label": label,
                "changed": False,
            }
            log.info("%s: label %r already points at version %d; nothing to move", name, label, version)
            _verify(result, name, version, settings)
            _write_result(result, name, out)
            return result
        serving_label = _other_label_serving(registry, name, label, version)
        if serving_label is not None and check is not None:
            log.info("%s: version %d already answers through label %r (verified when it moved there), so it is not "
                     "loaded in a sandbox again", name, version, serving_label)  # fmt: skip
        if check is not None and config.deploy.infra_validation and serving_label is None:
            sandbox = infra_validate(
                registry, name, version, check, timeout_s=config.deploy.infra_validation_timeout_s, tolerance=tolerance
            )
        else:
            sandbox = None
        journal = write_journal(registry.model_dir(name), name, label, version, current)
        moved = False
        try:
            if server is not None:
                _load_first(registry, server, name, label, version, current, server_poll_seconds)
            # Compare-and-set; the previous version stays loaded, so a roll back lands on a loaded version.
            registry.move_label(name, label, version, expected=current, keep=() if current is None else (current,))
            moved = True
            _fault_injection_point()
            result = {"version": version, "previous": current, "label": label, "changed": True}
            if sandbox is not None:
                result["infra_validation"] = sandbox
            _verify(result, name, version, settings)
            _write_result(result, name, out)
        except BaseException as exc:
            with label_move_context(reason=f"{FAILED_DEPLOY_REASON} ({type(exc).__name__}: {exc})"[:500]):
                restored, settled = restore_label(
                    registry, server, name, label, version, current, confirm=moved,
                    server_poll_seconds=server_poll_seconds,
                )  # fmt: skip
            if settled:  # else the journal stays, so that the next deploy or lookup repairs and waits again
                remove_journal(journal)
            if moved and isinstance(exc, DeployVerificationError):
                raise DeployVerificationError(
                    f"deploy of {name} version {version} failed verification on {server_url}: {exc}. {restored}"
                ) from None
            log.error("%s: deploy of version %d failed (%s). %s", name, version, exc, restored)
            raise
        remove_journal(journal)
        # Only now, with nothing left to roll back to it, does the previous version leave the policy.
        _unload_previous(registry, name, label, version, current)
        return result


@dataclass(frozen=True)
class _Verification:
    server: ModelServerClient | None
    check: SmokeCheck | None
    tolerance: float
    server_poll_seconds: float


def _other_label_serving(registry: ModelRegistry, name: str, label: str, version: int) -> str | None:
    """Another label that names ``version`` with no unfinished move (a canary being promoted), or None."""
    for other, labelled in sorted(registry.labels(name).items()):
        if other != label and labelled == version:
            return other
    return None


def _check_gated_bytes(registry: ModelRegistry, name: str, version: int) -> None:
    """Refuse a version whose served bytes are not the bytes its gate measured (before any label moves)."""
    lineage = registry.read_metadata(name, version)["lineage"] or {}
    measured = lineage.get("measured_artifact")
    if not isinstance(measured, Mapping) or not measured.get("sha256"):
        log.warning("%s version %d: its lineage names no measured artifact (registered without an evaluation), "
                    "so the served bytes are not compared with what a gate measured", name, version)  # fmt: skip
        return
    served = served_artifact(artifact_store.local_version_dir(registry, name, version))
    if (served.format, served.sha256) != (measured.get("format"), measured["sha256"]):
        raise ServedBytesError(
            f"{name} version {version} would serve {served.path} ({served.format}, sha256 {served.sha256}), "
            f"but its gate measured a {measured.get('format')} with sha256 {measured['sha256']} "
            f"({measured.get('path')}); no label was moved. Register the evaluated artifact as a new version"
        )


def _verify(result: dict[str, Any], name: str, version: int, settings: _Verification) -> None:
    """Wait until the label answers with ``version``, then smoke-check through it (when there is a server)."""
    server, check = settings.server, settings.check
    if server is None or check is None:
        log.info("%s: no model server URL given, so the deploy of version %d is not verified", name, version)
        result["verified"] = False
        return
    smoke = verify_deployment(
        name, version, result["label"], server, check, tolerance=settings.tolerance,
        server_poll_seconds=settings.server_poll_seconds, steady_s=settings.server_poll_seconds,
    )  # fmt: skip
    result.update(verified=True, server_url=server.url, smoke=smoke)


def _write_result(result: dict[str, Any], name: str, out: Path) -> None:
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**result, "model_name": name})


def _unload_previous(registry: ModelRegistry, name: str, label: str, version: int, previous: int | None) -> None:
    """Drop the previous version from the policy, if ``label`` still names ``version`` (a compare-and-set).

    The deploy is complete either way: a version left loaded here leaves the
    policy at the model's next label edit.
    """
    try:
        registry.move_label(name, label, version, expected=version)
    except RegistryError as exc:
        log.warning("%s: version %s stays loaded until the next label edit: %s", name, previous, exc)


def _load_first(
    registry: ModelRegistry,
    server: ModelServerClient,
    name: str,
    label: str,
    version: int,
    current: int | None,
    server_poll_seconds: float,
) -> None:
    """TF Serving refuses a label on a version it has not loaded: load it and wait until AVAILABLE everywhere.

    AVAILABLE for one config poll in a row: each replica behind the URL reads
    the new policy on its own poll, and one that had not loaded the version
    would refuse the label move.
    """
    registry.preload(name, version)
    try:
        server.wait_available(name, version=version, steady_s=server_poll_seconds)
    except ServerNotReadyError as exc:
        raise DeployVerificationError(
            f"{name} version {version} did not become AVAILABLE on {server.url}, so label {label!r} "
            f"was not moved and version {current} keeps serving: {exc}"
        ) from None


def _fault_injection_point() -> None:
    fault = os.environ.get(FAULT_AFTER_LABEL_MOVE_ENV, "")
    if fault.startswith("@"):
        fault_file = Path(fault[1:])
        fault = fault_file.read_text().strip() if fault_file.is_file() else ""
    if fault == "hang":
        log.warning("fault injected by %s=hang: waiting to be stopped", FAULT_AFTER_LABEL_MOVE_ENV)
        while True:
            time.sleep(1.0)
    if fault == "sigkill":
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        raise RuntimeError(f"fault injected by {FAULT_AFTER_LABEL_MOVE_ENV}=raise after the label moved")


def _earlier_result(out: Path, label: str, version: int) -> dict[str, Any] | None:
    path = out / "result.json"
    try:
        earlier = artifacts.read_json(path)
    except (OSError, ValueError):
        return None
    if isinstance(earlier, Mapping) and earlier.get("label") == label and earlier.get("version") == version:
        return dict(earlier)
    return None
