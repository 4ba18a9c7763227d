"""Infra validation: the version alone in a sandbox model server, queried with its own rows, before any label moves.

As TFX's InfraValidator does it: a model that passed every offline check can
still fail where it is served (an op the server lacks, a warmup request that
fails, a signature the server reads differently).  So before a deploy moves a
label, :func:`infra_validate` starts the project's model server in its
``tfserving`` behaviour (TF Serving's flags: ``model.tflite`` preferred, the
config read once) on a spare loopback port, over a private folder whose
``models.config`` names only this version and whose ``<name>`` entry links to
the registry's version folders.  It waits until the version is AVAILABLE
(the server verifies the checksums, loads the artifact TF Serving would, and
replays the warmup requests), sends the smoke rows to
``/v1/models/<name>/versions/<v>:predict`` and compares the answers with the
offline ones.  The sandbox is stopped either way; nothing in the registry or
in the serving ``models.config`` changes.

This sandbox is a local process on every backend (in the step's own container
on the docker and kubernetes backends).  It is not TF Serving's binary, which
the project cannot run here; the ``tfserving`` behaviour is the stand-in that
does what TF Serving does (docs/serving.md lists where it is still kinder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from include.mlops import artifact_store
from include.mlops.config import PROJECT_ROOT
from include.mlops.deploy.errors import DeployVerificationError, InfraValidationError, SandboxTimeoutError
from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError
from include.mlops.deploy.smoke import SmokeCheck, compare_answers
from include.mlops.registry.protocol import ModelRegistry

log = logging.getLogger(__name__)

SANDBOX_LOG = "sandbox.log"
# How often the wait for AVAILABLE checks that the sandbox process is still alive.
PROCESS_CHECK_S = 3.0


def infra_validate(
    registry: ModelRegistry, name: str, version: int, check: SmokeCheck, *, timeout_s: float, tolerance: float
) -> dict[str, Any]:
    """Load ``version`` of ``name`` alone in a sandbox server and check its answers; ``{"seconds", "max_abs_diff"}``."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlops-sandbox-") as tmp:
        root = Path(tmp) / "models"
        root.mkdir()
        # The version's folder on local disk: the registry's own, or its copy in the artifact root's mirror.
        local = artifact_store.local_version_dir(registry, name, version)
        (root / name).symlink_to(local.parent, target_is_directory=True)
        artifact_store.open_registry(root).preload(name, version)  # models.config with this version only, no label
        port = _free_port()
        log.info("%s: infra validation of version %d in a sandbox server on port %d", name, version, port)
        with _sandbox_server(root, port, Path(tmp) / SANDBOX_LOG) as (proc, sandbox_log):
            # Short waits in a loop, so that a sandbox that died is reported at once, not after the timeout.
            client = ModelServerClient(f"http://127.0.0.1:{port}", timeout=min(timeout_s, PROCESS_CHECK_S))
            with client:
                deadline = started + timeout_s
                while True:
                    try:
                        client.wait_available(name, version=version)
                        break
                    except ServerNotReadyError as exc:
                        if proc.poll() is not None or "could not load" in str(exc) or time.monotonic() >= deadline:
                            _raise_not_available(name, version, exc, proc, sandbox_log, timeout_s)
                loaded_s = time.monotonic() - started
                try:
                    max_diff = compare_answers(
                        client, f"/v1/models/{name}/versions/{version}", check, tolerance,
                        what="the sandbox", version=version,
                    )  # fmt: skip
                except DeployVerificationError as exc:
                    raise InfraValidationError(f"{name} version {version} failed infra validation: {exc}") from None
    seconds = time.monotonic() - started
    log.info("%s: version %d passed infra validation in %.1f s (AVAILABLE after %.1f s, %d rows, max abs diff %.3g)",
             name, version, seconds, loaded_s, len(check.rows), max_diff)  # fmt: skip
    return {"seconds": round(seconds, 3), "available_after_s": round(loaded_s, 3), "max_abs_diff": max_diff}


def _raise_not_available(
    name: str, version: int, exc: ServerNotReadyError, proc: subprocess.Popen[bytes], sandbox_log: Path, timeout: float
) -> None:
    tail = _tail(sandbox_log)
    if proc.poll() is not None:
        raise InfraValidationError(
            f"{name} version {version} failed infra validation: the sandbox server exited ({proc.returncode}) "
            f"before serving it. Its log ends:\n{tail}"
        )
    if "could not load" in str(exc):
        raise InfraValidationError(f"{name} version {version} failed infra validation: {exc}")
    raise SandboxTimeoutError(
        f"{name} version {version} was not AVAILABLE in the sandbox within {timeout:g} s "
        f"(deploy.infra_validation_timeout_s): {exc}. The sandbox's log ends:\n{tail}"
    )


@contextlib.contextmanager
def _sandbox_server(root: Path, port: int, log_path: Path) -> Any:
    argv = [
        sys.executable, "-m", "include.mlops.serving", "--registry", str(root), "--host", "127.0.0.1",
        "--port", str(port), "--behaviour", "tfserving", "--prefer-tflite-model", "--poll-seconds", "0",
        "--file-system-poll-seconds", "0", "--no-predlog", "--log-level", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc, log_path
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
