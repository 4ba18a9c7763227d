"""The step runner: import the heavy libraries once, then fork one child per step.

    python -m include.mlops.warm [--socket PATH]

The runner is one thread (forking a process with other Python threads can copy
a lock that is held), waiting on its socket and on SIGCHLD.  Each request is
checked (:func:`~include.mlops.warm.protocol.incompatibility`), then forked:
the child takes the request's folder, environment, ``sys.path`` and output
pipe, leads a process group of its own, and runs the step CLI's ``main``;
the runner reports its pid, then its exit status.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from include.mlops.warm.protocol import (
    LineReader,
    ProtocolError,
    incompatibility,
    send,
    validate_request,
)

log = logging.getLogger("include.mlops.warm")

REQUEST_TIMEOUT_S = 10.0


def preload(modules: Iterable[str]) -> dict[str, float]:
    """Import ``modules``; seconds each took.  One that fails to import is logged and skipped."""
    seconds = {}
    for name in modules:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library only means its steps start cold-ish
            log.warning("preloading %s failed (%s): steps that use it import it themselves", name, exc)
            continue
        seconds[name] = round(time.perf_counter() - start, 3)
    return seconds


def child_sys_path(current: Sequence[str], own_prefix: Sequence[str], cwd: str, env: Mapping[str, str]) -> list[str]:
    """``sys.path`` as ``python -m`` in ``cwd`` with ``env`` would start: the folder, $PYTHONPATH, then the rest."""
    front = [cwd, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    rest = [p for p in current if p not in own_prefix and p not in front]
    return front + rest


def _exit_code(code: object) -> int:
    """What ``sys.exit(code)`` makes the interpreter exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_child(request: Mapping[str, Any], output_fd: int, own_prefix: Sequence[str], close: Iterable[int]) -> None:
    """In the forked child: become the step's process and run it; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        # What a new interpreter starts with: default dispositions, KeyboardInterrupt on SIGINT; SIGPIPE
        # stays ignored (inherited), as Python sets it, so a closed output pipe is an error, not a kill.
        for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in close:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(null)
        os.close(output_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = child_sys_path(sys.path, own_prefix, request["cwd"], request["env"])
        sys.argv = ["include.mlops", *request["argv"]]
        if "numpy" in sys.modules:  # the runner's generator state is shared by every fork: draw fresh entropy
            sys.modules["numpy"].random.seed()
        from include.mlops.cli import main

        try:
            code = _exit_code(main(request["argv"]))
        except SystemExit as exc:
            code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # What interpreter shutdown does, without unwinding into the runner's frames.
        try:
            for thread in threading.enumerate():
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class StepRunner:
    """The runner's loop: accept, check, fork; report pids and exit statuses."""

    def __init__(self, path: Path, own_prefix: Sequence[str], started_env: Mapping[str, str]) -> None:
        self.path = path
        self.own_prefix = list(own_prefix)
        self.started_env = dict(started_env)
        self.children: dict[int, tuple[socket.socket, str, float]] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wake_read, self.wake_write = socket.socketpair()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():  # a runner that crashed left its socket behind
            self.path.unlink()
        old_umask = os.umask(0o177)  # the socket runs steps as this user: only this user may connect
        try:
            self.listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        self.listener.listen(64)
        for sock in (self.wake_read, self.wake_write):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_write.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_read, selectors.EVENT_READ)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT; steps still running go on, their clients see an unknown exit."""
        log.info("step runner ready on %s (pid %d)", self.path, os.getpid())
        try:
            while not self.stopping:
                for key, _ in self.selector.select(timeout=1.0):
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        self._drain_wakeups()
                self._reap()
        finally:
            self.close()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.selector.close()
        self.listener.close()
        if self.path.is_socket():
            self.path.unlink()
        for conn, _, _ in self.children.values():
            conn.close()

    def _drain_wakeups(self) -> None:
        try:
            while self.wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            conn, step, started = self.children.pop(pid)
            returncode = os.waitstatus_to_exitcode(status)
            log.info("step %s (pid %d) ended with %d after %.1f s", step, pid, returncode, time.monotonic() - started)
            try:
                send(conn, {"returncode": returncode})
            except OSError:  # the task that asked went away (killed); nothing to tell
                pass
            conn.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(REQUEST_TIMEOUT_S)
        reader = LineReader(conn)
        try:
            message = reader.read()
            if message is None:  # connected and closed: a readiness check
                conn.close()
                return
            request = validate_request(message)
            if len(reader.fds) != 1:
                raise ProtocolError(f"a request carries one file descriptor (the output pipe), not {len(reader.fds)}")
            reason = incompatibility(sys.executable, self.started_env, request)
            if reason is not None:
                send(conn, {"refused": reason})
                conn.close()
                return
            self._fork(conn, request, reader.fds.pop())
        except (ProtocolError, OSError) as exc:
            log.warning("bad request: %s", exc)
            try:
                send(conn, {"refused": f"bad request: {exc}"})
            except OSError:
                pass
            conn.close()
        finally:
            for fd in reader.fds:
                os.close(fd)

    def _fork(self, conn: socket.socket, request: dict[str, Any], output_fd: int) -> None:
        step = request["argv"][0] if request["argv"] else "?"
        sys.stdout.flush()
        sys.stderr.flush()
        inherited = [self.listener.fileno(), self.wake_read.fileno(), self.wake_write.fileno(), conn.fileno()]
        inherited += [c.fileno() for c, _, _ in self.children.values()]
        try:
            pid = os.fork()
        except OSError:
            os.close(output_fd)
            raise
        if pid == 0:
            run_child(request, output_fd, self.own_prefix, inherited)
        os.close(output_fd)
        try:
            os.setpgid(pid, pid)
        except OSError:  # the child got there first (or is gone already): either way its group is its own
            pass
        self.children[pid] = (conn, step, time.monotonic())
        log.info("step %s started warm (pid %d)", step, pid)
        try:
            send(conn, {"pid": pid})
        except OSError:  # the task went away before it heard the pid; the step runs, its end is logged
            log.warning("the task that asked for step %s (pid %d) went away", step, pid)
