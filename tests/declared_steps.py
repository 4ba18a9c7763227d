"""A step that only the tests declare: ``touch`` writes a file under ``--out`` and says where.

Importing this module registers it, as ``$MLOPS_STEP_MODULES=declared_steps``
does in a step subprocess (with ``tests/`` on its ``PYTHONPATH``).  Tests import
it in their ``touch_step`` fixture, which removes the step again afterwards,
so that the other tests see the lifecycle's steps only.  ``--fail`` makes it fail in the
ways whose exit codes the declaration decides.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from include.mlops.steps import Argument, Step, register_step

MODULE = __name__
TOUCHED_FILE = "touched.txt"  # under --out


class TouchRefusedError(Exception):
    """``--fail bad-input``: declared as bad input by the step, so the CLI exits 3."""


def run_touch(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    if args.fail == "bad-input":
        raise TouchRefusedError(f"refusing to touch for model {config.name}")
    if args.fail == "crash":
        raise RuntimeError("the touch step crashed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOUCHED_FILE
    path.write_text(args.text)
    if args.fail == "short-result":
        return {"touched_uri": str(path)}
    return {"touched_uri": str(path), "model": config.name, "characters": len(args.text)}


TOUCH = register_step(
    Step(
        name="touch",
        help="write --text to a file under --out (declared by the tests)",
        runner=run_touch,
        arguments=(
            Argument("--text", required=True, help="what to write"),
            Argument("--fail", help="bad-input, crash or short-result: fail that way"),
        ),
        timeout_s=45,
        bad_input=((MODULE, "TouchRefusedError"),),
        gpus=True,
        heavy=True,
        result_keys=("touched_uri", "model"),
    )
)
