"""Asking the step runner for a warm start: a ``Popen``-like handle, or the reason to start cold."""

from __future__ import annotations

import io
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from include.mlops.warm.protocol import LineReader, ProtocolError, enabled, send, socket_path

CONNECT_TIMEOUT_S = 2.0
# The runner answers within milliseconds; this long without an answer means it is wedged.
REPLY_TIMEOUT_S = 30.0


class WarmStartError(RuntimeError):
    """The runner took the request but did not say it started the step: the try fails, and the retry starts cold.

    Starting cold at once could run the step twice, if the runner forked it after all.
    """


class WarmStep:
    """A step forked by the runner, handled like ``subprocess.Popen``: ``pid``, ``stdout``, ``poll``, ``wait``.

    ``pid`` leads the step's process group.  ``wait`` returns the exit status the
    runner reports (negative for a signal), or None when the runner went away
    before it could: the step's end is then unknown, which the task retries.
    """

    def __init__(self, conn: socket.socket, reader: LineReader, pid: int, stdout: io.TextIOWrapper) -> None:
        self._conn = conn
        self._reader = reader
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self.ended = False

    def _read_status(self, timeout: float | None) -> None:
        if self.ended:
            return
        self._conn.settimeout(timeout)
        try:
            message = self._reader.read()
        except (TimeoutError, BlockingIOError):
            raise subprocess.TimeoutExpired(f"warm step {self.pid}", timeout or 0) from None
        except (ProtocolError, OSError):
            message = None
        code = (message or {}).get("returncode")
        self.returncode = code if isinstance(code, int) else None
        self.ended = True
        self._conn.close()

    def poll(self) -> int | None:
        """The exit status if the step has ended (None while it runs, or when the runner went away)."""
        try:
            self._read_status(0.0)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the step's end: its exit status, or None if the runner went away; ``TimeoutExpired`` on timeout."""
        self._read_status(timeout)
        return self.returncode


def start_warm(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | Path, *, path: Path | None = None
) -> WarmStep | str:
    """Start ``argv`` (``python -m include.mlops ...``) in the step runner: a :class:`WarmStep`, or why not.

    ``argv[0]`` is the interpreter and ``argv[1:3]`` must be ``-m include.mlops``.  A string
    is the reason to start the step cold (no runner, warm starts off, a runner
    that refused).  Raises :class:`WarmStartError` when the runner accepted the
    request and then failed to answer.
    """
    if not enabled(env):
        return "warm starts are off ($MLOPS_WARM_STEPS)"
    if list(argv[1:3]) != ["-m", "include.mlops"]:
        return f"not a step command: {' '.join(argv[:3])}"
    path = path or socket_path(env)
    if path is None or not path.is_socket():
        return f"no step runner at {path}" if path else "no step runner configured"
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(str(path))
    except OSError as exc:
        conn.close()
        return f"the step runner at {path} does not answer ({exc})"
    read_fd, write_fd = os.pipe()
    handed_over = False  # until the WarmStep owns the pipe's read end and the connection
    try:
        request = {"executable": argv[0], "argv": list(argv[3:]), "cwd": str(cwd), "env": dict(env)}
        try:
            send(conn, request, [write_fd])
        except OSError as exc:
            return f"the step runner at {path} did not take the request ({exc})"
        finally:
            os.close(write_fd)  # sent: the runner holds its own copy
        reader = LineReader(conn)
        conn.settimeout(REPLY_TIMEOUT_S)
        try:
            reply = reader.read()
        except (OSError, ProtocolError) as exc:
            raise WarmStartError(f"the step runner at {path} took the request but did not answer: {exc}") from None
        if reply is not None and isinstance(reply.get("refused"), str):
            return f"the step runner refused: {reply['refused']}"
        if reply is None or not isinstance(reply.get("pid"), int):
            raise WarmStartError(f"the step runner at {path} answered {reply!r} instead of a pid")
        stdout = io.open(read_fd, "r", encoding="utf-8", errors="replace", buffering=1)  # noqa: UP020
        handed_over = True
        return WarmStep(conn, reader, reply["pid"], stdout)
    finally:
        if not handed_over:
            os.close(read_fd)
            conn.close()
