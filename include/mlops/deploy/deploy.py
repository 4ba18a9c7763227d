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
3. The version is loaded, the label moves, and the answers through the label
   are compared with the expected ones; then the result is written and the
   journal removed.

Any exception in step 3 moves the label back (or removes it if it was new).
A crash there (SIGKILL, a lost node) leaves the journal behind: the retry
finds it, restores the previous label first, and then deploys again, so the
label ends on the old version, or on the new one only once it was verified.
A retry after a completed deploy finds no journal and changes nothing.
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
from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError
from include.mlops.deploy.smoke import SmokeCheck, prepare_smoke_check, smoke_rows, verify_deployment
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.protocol import ModelRegistry

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
    # First, before anything can fail: a label left on an unverified version by a crashed attempt goes back.
    _recover_half_done_deploy(registry, journal)
    registry.verify(name, version)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ModelServerClient(server_url, timeout=timeout)) if server_url else None
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
            _finish(result, name, out, server, check, version, tolerance)
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
            registry.set_label(name, label, version)
            moved = True
            _fault_injection_point()
            result = {"version": version, "previous": current, "label": label, "changed": True}
            _finish(result, name, out, server, check, version, tolerance)
        except BaseException as exc:
            restored = _restore_label(registry, name, label, version, current)
            journal.unlink(missing_ok=True)
            if moved and isinstance(exc, DeployVerificationError):
                raise DeployVerificationError(
                    f"deploy of {name} version {version} failed verification on {server_url}: {exc}. {restored}"
                ) from None
            log.error("%s: deploy of version %d failed (%s). %s", name, version, exc, restored)
            raise
        journal.unlink(missing_ok=True)
        artifacts.fsync_dir(journal.parent)
        return result


def _finish(
    result: dict[str, Any],
    name: str,
    out: Path,
    server: ModelServerClient | None,
    check: SmokeCheck | None,
    version: int,
    tolerance: float,
) -> None:
    """Verify through the label (when there is a server), then write ``out/result.json``."""
    if server is None or check is None:
        log.info("%s: no model server URL given, so the deploy of version %d is not verified", name, version)
        result["verified"] = False
    else:
        smoke = verify_deployment(name, version, result["label"], server, check, tolerance=tolerance)
        result.update(verified=True, server_url=server.url, smoke=smoke)
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**result, "model_name": name})


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


def _recover_half_done_deploy(registry: ModelRegistry, journal: Path) -> None:
    """Undo a deploy that died between moving its label and finishing (its journal is still there)."""
    if not journal.is_file():
        return
    try:
        entry = artifacts.read_json(journal)
        name, label, version, previous = entry["model_name"], entry["label"], entry["version"], entry["previous"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeployError(
            f"the deploy journal {journal} is unreadable ({exc!r}); check the model's labels in "
            f"{registry.config_path} by hand, then delete the journal and retry"
        ) from None
    log.warning(
        "%s: an earlier attempt (pid %s) died while moving label %r to version %s; restoring it first",
        name, entry.get("pid"), label, version,
    )  # fmt: skip
    log.warning("%s: %s", name, _restore_label(registry, name, label, version, previous))
    journal.unlink()
    artifacts.fsync_dir(journal.parent)


def _restore_label(registry: ModelRegistry, name: str, label: str, moved_to: int, previous: int | None) -> str:
    """Point ``label`` back at ``previous`` (or remove it); returns a sentence for messages."""
    now = registry.label_version(name, label)
    if now not in (moved_to, previous):
        log.warning("%s: label %r now names version %s, moved by someone else; leaving it", name, label, now)
        return f"Label {label!r} was moved to version {now} by someone else meanwhile and was left there."
    if previous is None:
        registry.remove_label(name, label)
        _unload_unlabelled(registry, name)
        return f"Label {label!r} was removed (no version had it before)."
    # Also drops a preloaded, unlabelled version from the version policy.
    registry.set_label(name, label, previous)
    log.error("%s: label %r moved back to version %d", name, label, previous)
    return f"Label {label!r} was moved back to version {previous}, which keeps serving."


def _unload_unlabelled(registry: ModelRegistry, name: str) -> None:
    """Undo a :meth:`Registry.preload` whose version was never labelled (keep only labelled versions)."""
    labels = registry.labels(name)
    if labels:
        # Re-pointing one label at its own version rewrites the policy to exactly the labelled versions.
        first, target = next(iter(sorted(labels.items())))
        registry.set_label(name, first, target)


def _earlier_result(out: Path, label: str, version: int) -> dict[str, Any] | None:
    path = out / "result.json"
    try:
        earlier = artifacts.read_json(path)
    except (OSError, ValueError):
        return None
    if isinstance(earlier, Mapping) and earlier.get("label") == label and earlier.get("version") == version:
        return dict(earlier)
    return None
