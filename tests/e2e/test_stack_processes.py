"""scripts/stack_processes.py under a real supervisord: a crash's leftovers end, and so does a stopped stack.

A small stand-in component (a shell that starts a child in a process group of its own,
as Airflow's task runner does, then sleeps) keeps this test to seconds; the Airflow
components are exercised the same way by test_airflow_e2e.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STACK_PROCESSES = PROJECT_ROOT / "scripts" / "stack_processes.py"

COMPONENT = """\
import os, subprocess, sys, time
# A child in its own process group, like a task runner: supervisord's group kill misses it.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
open(sys.argv[1], "a").write(f"{os.getpid()} {child.pid}\\n")
time.sleep(600)
"""


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    (tmp_path / "component.py").write_text(COMPONENT)
    started = tmp_path / "started.txt"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"""[supervisord]
nodaemon = true
logfile = {tmp_path}/supervisord.log
pidfile = {tmp_path}/supervisord.pid

[program:component]
command = {sys.executable} {STACK_PROCESSES} exec component -- {sys.executable} {tmp_path}/component.py {started}
startsecs = 1
autorestart = true
stopasgroup = true
killasgroup = true
stopwaitsecs = 10
"""
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield supervisor, started
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        subprocess.run([sys.executable, STACK_PROCESSES, "reap", "--session", str(supervisor.pid)], check=True)


def instances(started: Path) -> list[tuple[int, int]]:
    if not started.exists():
        return []
    return [tuple(map(int, line.split())) for line in started.read_text().splitlines()]  # type: ignore[misc]


def test_a_restarted_component_ends_what_its_crashed_instance_left(
    supervised: tuple[subprocess.Popen[bytes], Path],
) -> None:
    _, started = supervised
    wait_until(lambda: len(instances(started)) == 1)
    [(component, child)] = instances(started)

    os.kill(component, signal.SIGKILL)  # the child is now an orphan, outside supervisord's tree
    wait_until(lambda: len(instances(started)) == 2)
    wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE)
    new_component, new_child = instances(started)[1]
    assert psutil.pid_exists(new_component) and psutil.pid_exists(new_child)


def test_reap_after_supervisord_stops_leaves_no_process(supervised: tuple[subprocess.Popen[bytes], Path]) -> None:
    supervisor, started = supervised
    wait_until(lambda: len(instances(started)) == 1)
    [(component, _child)] = instances(started)
    os.kill(component, signal.SIGKILL)
    wait_until(lambda: len(instances(started)) == 2)

    supervisor.send_signal(signal.SIGTERM)  # as `make run` on Ctrl-C
    supervisor.wait(timeout=30)
    subprocess.run([sys.executable, STACK_PROCESSES, "reap", "--session", str(supervisor.pid)], check=True)

    def gone(pid: int) -> bool:
        return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    wait_until(lambda: all(gone(pid) for pair in instances(started) for pid in pair), timeout=15)
    assert [p for p in psutil.process_iter() if _session(p.pid) == supervisor.pid] == []


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
