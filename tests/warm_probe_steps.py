"""A step that only the warm-runner tests declare: ``probe`` reports the process it runs in, or misbehaves.

Named in ``$MLOPS_STEP_MODULES=warm_probe_steps`` (with ``tests/`` on the
step's ``PYTHONPATH``), so that a step forked by the runner finds it only if
the request's environment and ``sys.path`` reached the child.

``--action``: ``report`` (the default) returns the folder, pid, process group,
``$MLOPS_PROBE``, ``sys.path``'s head and a draw from numpy's global generator;
``sleep`` starts a grandchild in its process group, says so and sleeps;
``sigkill`` kills its own process; ``exit-4`` leaves with ``sys.exit(4)``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from include.mlops.steps import Argument, Step, register_step

MODULE = __name__


def run_probe(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "sleep":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print(f"probe sleeping: grandchild {grandchild.pid}", flush=True)
        time.sleep(300)
    if args.action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if args.action == "exit-4":
        sys.exit(4)
    import numpy

    return {
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "probe": os.environ.get("MLOPS_PROBE"),
        "path_head": sys.path[:3],
        "draw": float(numpy.random.random()),
        "model": config.name,
    }


PROBE = register_step(
    Step(
        name="probe",
        help="report the process the step runs in (declared by the warm-runner tests)",
        runner=run_probe,
        arguments=(Argument("--action", default="report", help="report, sleep, sigkill or exit-4"),),
        timeout_s=60,
    )
)
