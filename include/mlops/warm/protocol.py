"""The step runner's protocol: where its socket is, when a request may run warm, and the framing.

One connection per step.  The client sends one JSON line, with the write end
of its output pipe attached (``SCM_RIGHTS``)::

    {"executable": "/.../python", "argv": ["train", "--model", ...], "cwd": "/repo", "env": {...}}

and the runner answers with JSON lines: ``{"refused": REASON}`` (the client
starts the step cold), or ``{"pid": PID}`` and, when the step has ended,
``{"returncode": CODE}`` (negative for a signal, as ``Popen`` reports it).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SOCKET_ENV = "MLOPS_STEP_RUNNER_SOCKET"
ENABLED_ENV = "MLOPS_WARM_STEPS"
SOCKET_NAME = "step-runner.sock"
# What the runner imports before it forks: the libraries whose import dominates a step's start.
PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "tensorflow", "keras", "great_expectations", "httpx", "pydantic")
# Settings read once, when a preloaded library is imported or the interpreter starts: a step whose
# environment differs in one of them would not get what it asked for from a runner started without it.
IMPORT_TIME_PREFIXES = ("TF_", "CUDA_", "XLA_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GX_", "LD_", "MALLOC_", "PYTHON")
# Read per process, not at import: the child sets sys.path from it.
NOT_IMPORT_TIME = frozenset({"PYTHONPATH"})
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ProtocolError(RuntimeError):
    """The peer sent something that is not this protocol."""


def enabled(env: Mapping[str, str]) -> bool:
    """Whether warm starts are allowed: ``$MLOPS_WARM_STEPS`` unset, or not one of 0/false/no/off."""
    return env.get(ENABLED_ENV, "").strip().lower() not in {"0", "false", "no", "off"}


def socket_path(env: Mapping[str, str]) -> Path | None:
    """The runner's socket: ``$MLOPS_STEP_RUNNER_SOCKET``, else ``$AIRFLOW_HOME/step-runner.sock``, else none."""
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    if env.get("AIRFLOW_HOME"):
        return Path(env["AIRFLOW_HOME"]) / SOCKET_NAME
    return None


def import_time_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that take effect at interpreter start or library import."""
    return {
        key: value for key, value in env.items() if key.startswith(IMPORT_TIME_PREFIXES) and key not in NOT_IMPORT_TIME
    }


def incompatibility(runner_executable: str, runner_env: Mapping[str, str], request: Mapping[str, Any]) -> str | None:
    """Why ``request`` cannot run in a runner started as ``runner_executable`` with ``runner_env``; None if it can."""
    wanted = request.get("executable")
    if not isinstance(wanted, str) or os.path.realpath(wanted) != os.path.realpath(runner_executable):
        return f"the step wants interpreter {wanted!r}, the runner is {runner_executable!r}"
    ours, theirs = import_time_settings(runner_env), import_time_settings(request.get("env") or {})
    differing = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
    if differing:
        return f"import-time settings differ from the runner's: {', '.join(differing)}"
    return None


def validate_request(request: Any) -> dict[str, Any]:
    """``request`` if it has the fields a step needs, with their types; else :class:`ProtocolError`."""
    if not isinstance(request, dict):
        raise ProtocolError(f"a request is a JSON object, not {type(request).__name__}")
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("request field 'argv' must be a list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError("request field 'env' must map strings to strings")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise ProtocolError("request field 'cwd' must be an absolute path")
    return request


def send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    """Send ``message`` as one JSON line, with ``fds`` attached to its first byte."""
    data = json.dumps(message).encode() + b"\n"
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    if data:
        sock.sendall(data)


class LineReader:
    """JSON lines from a socket, with the file descriptors that came with them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def read(self) -> dict[str, Any] | None:
        """The next message, or None at end of stream (a partial line is a :class:`ProtocolError`)."""
        while b"\n" not in self.buffer:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 4)
            self.fds += fds
            if not data:
                if self.buffer:
                    raise ProtocolError("connection closed in the middle of a message")
                return None
            self.buffer += data
            if len(self.buffer) > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"message over {MAX_MESSAGE_BYTES} bytes")
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"not a JSON line: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("a message is a JSON object")
        return message
