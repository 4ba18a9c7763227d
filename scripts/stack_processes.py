"""Start one component of the embedded stack, and end whatever a component leaves behind.

supervisord (``scripts/supervisord.conf``) restarts a component that crashed, but it only
knows the component's own process: a scheduler killed with ``kill -9`` leaves its
LocalExecutor workers, their task processes (each in a process group of its own) and its
log server running, holding port 8793 and the task slots.  supervisord is started in a
session of its own (``setsid``), and every process of the stack stays in that session, so
a process of the session that no longer descends from supervisord is a leftover.
(Environment markers would not do: Airflow's ``setproctitle`` overwrites what
``/proc/PID/environ`` shows for the scheduler and its forked workers.)

    python scripts/stack_processes.py exec NAME [--wait-for URL] -- COMMAND...
        end the session's leftovers, optionally wait until URL answers (the scheduler and
        triggerer need the API server), then become COMMAND.  supervisord runs this.
    python scripts/stack_processes.py session -- COMMAND...
        become COMMAND in a new session (`setsid`, which macOS lacks); `make run` starts
        supervisord so.
    python scripts/stack_processes.py reap --session SID
        end every process left in session SID (after supervisord has stopped).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import httpx
import psutil
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

log = logging.getLogger("stack_processes")


def session_processes(session: int) -> list[psutil.Process]:
    """Every process of ``session``, except this one and its parents."""
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in spared and os.getsid(proc.pid) == session:
                found.append(proc)
        except (psutil.Error, OSError):
            continue  # gone meanwhile
    return found


def leftovers(session: int, supervisor: int) -> list[psutil.Process]:
    """Processes of the stack's session that supervisord no longer supervises (orphans of a crash)."""
    strays = []
    for proc in session_processes(session):
        try:
            if proc.pid != supervisor and supervisor not in {p.pid for p in proc.parents()}:
                strays.append(proc)
        except psutil.Error:
            continue
    return strays


def end(processes: list[psutil.Process], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    for proc in processes:
        try:
            log.warning("ending left-over process %d: %s", proc.pid, " ".join(proc.cmdline()).strip()[:160])
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


@retry(retry=retry_if_exception_type(httpx.HTTPError), wait=wait_fixed(1), stop=stop_after_delay(600), reraise=True)
def wait_for(url: str) -> None:
    httpx.get(url, timeout=5).raise_for_status()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("exec", help="end the stack's leftovers, then become COMMAND")
    start.add_argument("name", help="the component's name, for the logs")
    start.add_argument("--wait-for", metavar="URL", help="start COMMAND only once URL answers 2xx")
    commands.add_parser("session", help="become COMMAND in a new session")
    reap = commands.add_parser("reap", help="end every process of a stopped stack")
    reap.add_argument("--session", type=int, required=True, help="the session ID (supervisord's PID)")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is the component's own command line, options included.
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]

    if args.command == "reap":
        end(session_processes(args.session))
        return 0
    if not command:
        parser.error(f"{args.command} needs a COMMAND after --")
    if args.command == "session":
        os.setsid()
        os.execvp(command[0], command)
    session, supervisor = os.getsid(0), os.getppid()
    if session == supervisor:
        end(leftovers(session, supervisor))
    else:
        log.warning("supervisord does not lead its own session: leftovers of crashed components are not ended")
    if args.wait_for:
        log.info("%s waits for %s", args.name, args.wait_for)
        wait_for(args.wait_for)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
