"""The deploy step: move a serving label to a registered version, verified through the model server.

``deploy`` moves a label (``stable``, ``canary``) in TF Serving's model config
file after verifying the version's checksums, so a corrupted version is never
put into service.  With a model server it is a transaction:

1. Everything that can fail without the server is done first, while the old
   version still serves: checksums, the held-out smoke rows, and the expected
   answers of the artifact the server will load (``model.tflite`` when the
   version has one, else the SavedModel; see :mod:`include.mlops.registry.serving_artifact`).
2. The previous version is written to the **deploy journal**, the file
   ``<out>.journal.json`` beside the step's ``out`` folder (beside it, because
   ``artifacts.step_output`` swaps the whole ``out`` folder in at the end).
3. The version is loaded (added to the version policy, awaited until
   AVAILABLE), and the label moves by compare-and-set
   (:meth:`ModelRegistry.move_label`) while the previous version stays in
   the policy, so that a roll back lands on a version the server has loaded
   (TF Serving refuses a label on an unloaded version).
4. Once the label answers with the version (its metadata through the server,
   after the server's next config poll), the answers through the label are
   compared with the expected ones; then the result is written, the journal
   removed, and only then does the previous version leave the policy (a
   roll back, or a retry's recovery, never has to name an unloaded version).

Any exception in steps 3-4 moves the label back (or removes it if it was new,
with the version: a failed first deploy leaves nothing loaded) and waits
until the label answers with the previous version again
(:mod:`include.mlops.deploy.rollback`).  A crash there (SIGKILL, a lost node)
leaves the journal behind: the retry finds it, restores the previous label
first, and then deploys again, so the label ends on the old version, or on the
new one only once it was verified.  A retry after a completed deploy finds no
journal and changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.deploy.errors import DeployError, DeployVerificationError
from include.mlops.deploy.rollback import recover_half_done_deploy, restore_label
from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError
from include.mlops.deploy.smoke import SmokeCheck, prepare_smoke_check, smoke_rows, verify_deployment
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.protocol import ModelRegistry, RegistryError

__all__ = [
    "FAULT_AFTER_LABEL_MOVE_ENV",
    "DeployError",
    "DeployVerificationError",
    "SmokeCheck",
    "deploy",
    "journal_path",
    "prepare_smoke_check",
    "smoke_rows",
    "verify_deployment",
]

log = logging.getLogger(__name__)

# Fault-injection point for tests only: "sigkill" kills the process, "raise" raises, right after the label
# moved and before it is verified (the worst moment to crash). Never set it outside tests.
FAULT_AFTER_LABEL_MOVE_ENV = "MLOPS_TEST_FAULT_AFTER_LABEL_MOVE"
# The server reads models.config once per poll (TF Serving's --model_config_file_poll_wait_seconds, 1 s in the
# shipped manifests), so a wait for a label move lasts at least that long, whatever --timeout says.
SERVER_POLL_SECONDS = 1.0


def journal_path(out: str | os.PathLike[str]) -> Path:
    """Where the deploy writing ``out`` keeps its journal (a sibling file, so it survives the ``out`` swap)."""
    out = Path(out)
    return out.parent / f"{out.name}.journal.json"


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

    Without ``server_url`` only the label moves and the result says
    ``"verified": false``.  A retry after the label already moved changes
    nothing and reports the ``previous`` version recorded in ``out/result.json``.
    """
    out = Path(out)
    registry: ModelRegistry = Registry()
    name = config.serving_name
    journal = journal_path(out)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ModelServerClient(server_url, timeout=timeout)) if server_url else None
        # First, before anything can fail: a label left on an unverified version by a crashed attempt goes back.
        recover_half_done_deploy(registry, server, journal, server_poll_seconds=SERVER_POLL_SECONDS)
        registry.verify(name, version)
        # Built while the old version still serves: an error here (bad rows, a model TF cannot load) moves nothing.
        check = (
            prepare_smoke_check(config, registry.require_version(name, version), data_uri, smoke_rows)
            if server is not None
            else None
        )
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
            _verify(result, name, server, check, version, tolerance)
            _write_result(result, name, out)
            return result
        artifacts.atomic_write_json(
            journal,
            {"model_name": name, "label": label, "version": version, "previous": current,
             "started_at": dt.datetime.now(dt.UTC).isoformat(), "pid": os.getpid()},
        )  # fmt: skip
        moved = False
        try:
            if server is not None:
                _load_first(registry, server, name, label, version, current)
            # Compare-and-set; the previous version stays loaded, so a roll back lands on a loaded version.
            registry.move_label(name, label, version, expected=current, keep=() if current is None else (current,))
            moved = True
            _fault_injection_point()
            result = {"version": version, "previous": current, "label": label, "changed": True}
            _verify(result, name, server, check, version, tolerance)
            _write_result(result, name, out)
        except BaseException as exc:
            restored, settled = restore_label(
                registry, server, name, label, version, current, confirm=moved, server_poll_seconds=SERVER_POLL_SECONDS
            )
            if settled:  # else the journal stays, so that the next attempt waits for the server again
                journal.unlink(missing_ok=True)
            if moved and isinstance(exc, DeployVerificationError):
                raise DeployVerificationError(
                    f"deploy of {name} version {version} failed verification on {server_url}: {exc}. {restored}"
                ) from None
            log.error("%s: deploy of version %d failed (%s). %s", name, version, exc, restored)
            raise
        journal.unlink(missing_ok=True)
        artifacts.fsync_dir(journal.parent)
        # Only now, with nothing left to roll back to it, does the previous version leave the policy.
        _unload_previous(registry, name, label, version, current)
        return result


def _verify(
    result: dict[str, Any],
    name: str,
    server: ModelServerClient | None,
    check: SmokeCheck | None,
    version: int,
    tolerance: float,
) -> None:
    """Wait until the label answers with ``version``, then smoke-check through it (when there is a server)."""
    if server is None or check is None:
        log.info("%s: no model server URL given, so the deploy of version %d is not verified", name, version)
        result["verified"] = False
        return
    smoke = verify_deployment(
        name, version, result["label"], server, check, tolerance=tolerance, server_poll_seconds=SERVER_POLL_SECONDS
    )
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
    registry: ModelRegistry, server: ModelServerClient, name: str, label: str, version: int, current: int | None
) -> None:
    """TF Serving refuses a label on a version it has not loaded: load it and wait until AVAILABLE."""
    registry.preload(name, version)
    try:
        server.wait_available(name, version=version)
    except ServerNotReadyError as exc:
        raise DeployVerificationError(
            f"{name} version {version} did not become AVAILABLE on {server.url}, so label {label!r} "
            f"was not moved and version {current} keeps serving: {exc}"
        ) from None


def _fault_injection_point() -> None:
    fault = os.environ.get(FAULT_AFTER_LABEL_MOVE_ENV)
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
