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
    python scripts/stack_processes.py exec NAME --optional HINT [--prometheus-config PATH] -- COMMAND...
        the same for an optional component (Prometheus, the Pushgateway): when COMMAND is not
        installed, print HINT and exit 0, which supervisord takes as an expected exit and does
        not restart.  --prometheus-config first renders include/monitoring/prometheus.yml for
        loopback ports ($MLOPS_SERVER_PORT, $MLOPS_PUSHGATEWAY_PORT, $MLOPS_PROMETHEUS_PORT) to PATH.
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
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil
import yaml
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

log = logging.getLogger("stack_processes")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = PROJECT_ROOT / "include" / "monitoring" / "prometheus.yml"
RULES_GLOB = PROJECT_ROOT / "include" / "monitoring" / "rules" / "*.yml"
SCRAPE_INTERVAL_ENV = "MLOPS_PROMETHEUS_SCRAPE_INTERVAL"
# Scrape job of include/monitoring/prometheus.yml -> the variable holding its loopback port under `make run`.
LOCAL_PORTS = {
    "model-server": "MLOPS_SERVER_PORT",
    "pushgateway": "MLOPS_PUSHGATEWAY_PORT",
    "prometheus": "MLOPS_PROMETHEUS_PORT",
}


def render_local_prometheus_config(target: Path, env: Mapping[str, str], source: Path = PROMETHEUS_CONFIG) -> Path:
    """The compose Prometheus config with every job pointed at its 127.0.0.1 port and the rules at the checkout."""
    config = yaml.safe_load(source.read_text())
    config["rule_files"] = [str(RULES_GLOB)]
    # A shorter scrape interval for tests whose windows are seconds long (a canary analysis's interval_s).
    if env.get(SCRAPE_INTERVAL_ENV):
        config["global"]["scrape_interval"] = env[SCRAPE_INTERVAL_ENV]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in LOCAL_PORTS:
            raise SystemExit(f"{source}: scrape job {name!r} has no local port; add it to LOCAL_PORTS in {__file__}")
        port = env.get(LOCAL_PORTS[name])
        if not port:
            raise SystemExit(f"set {LOCAL_PORTS[name]} (the local port of {name}) before starting Prometheus")
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{port}"]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".tmp")
    partial.write_text(f"# Rendered from {source} for `make run`; edit that file instead.\n" + yaml.safe_dump(config))
    partial.replace(target)
    return target


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
    start.add_argument("--optional", metavar="HINT", help="when COMMAND is not installed, print HINT and exit 0")
    start.add_argument("--prometheus-config", metavar="PATH", type=Path, help="render the local Prometheus config")
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
    if args.optional and shutil.which(command[0]) is None:
        # Exit 0: supervisord (exitcodes = 0, autorestart = unexpected) leaves the component stopped.
        print(f"{args.name} is not started: {command[0]} is not installed; {args.optional}", flush=True)
        return 0
    if args.prometheus_config:
        render_local_prometheus_config(args.prometheus_config, os.environ)
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
