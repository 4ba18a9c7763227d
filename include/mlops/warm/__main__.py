"""``python -m include.mlops.warm [--socket PATH]``: run the step runner (see :mod:`include.mlops.warm`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from include.mlops.warm.protocol import PRELOAD, SOCKET_ENV, socket_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.mlops.warm", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument(
        "--socket",
        type=Path,
        default=socket_path(os.environ),
        help=f"default: ${SOCKET_ENV}, else $AIRFLOW_HOME/step-runner.sock",
    )
    parser.add_argument(
        "--preload",
        default=",".join(PRELOAD),
        help="comma-separated modules to import before serving (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.socket is None:
        parser.error(f"give --socket, or set ${SOCKET_ENV} or $AIRFLOW_HOME")
    # The libraries' own INFO chatter (Great Expectations logs hundreds of lines on import) stays out.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from include.mlops.warm.server import StepRunner, log, preload

    log.setLevel(logging.INFO)
    # What this interpreter put in front of sys.path (its folder, its $PYTHONPATH): a child replaces it with its own.
    own_prefix = [sys.path[0], *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    # The task gives its step this default (mlops_airflow.step_logs): the runner must import TensorFlow under it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The environment as it was before the imports: TensorFlow sets KMP_* variables of its own when imported.
    started_env = dict(os.environ)
    seconds = preload(filter(None, args.preload.split(",")))
    log.info("preloaded %s in %.1f s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), sum(seconds.values()))
    runner = StepRunner(args.socket, own_prefix, started_env)
    runner.open()
    runner.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
