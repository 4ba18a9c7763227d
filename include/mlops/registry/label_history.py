"""``python -m include.mlops history <name>``: a model's label moves, newest first.

Reads the registry's audit log (``models/<serving name>/label-moves.jsonl``,
:mod:`include.mlops.registry.label_log`) under the artifact root: when each
label moved, from which version to which, by which process (pid and host),
and any other keys a line carries (a run, a task, a reason).  The Models
view's model page shows the same list.

A subcommand of the step CLI (``python -m include.mlops``, :data:`include.mlops.cli.COMMANDS`)
but not a step: it writes nothing and needs no ``--out``.  ``python -m
include.mlops.registry.label_history <name>`` runs the same.  Exit codes: 0,
also for a model with no recorded move; 3 for a name that is no model (no
config and no registry folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from include.mlops.exit_codes import EXIT_BAD_INPUT
from include.mlops.registry.catalog import Catalog, UnknownError
from include.mlops.registry.label_log import describe_move


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m include.mlops history", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the model's name (its config's name)")
    parser.add_argument(
        "--artifact-root", help="the artifact root (default: $MLOPS_ARTIFACT_ROOT or the project's artifacts/)"
    )
    parser.add_argument("--models-dir", help="folder of model configs (default: $MLOPS_MODELS_DIR or include/models)")
    parser.add_argument("--limit", type=int, default=None, help="show only the newest LIMIT moves")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, as the log has them")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    catalog = Catalog(args.artifact_root, args.models_dir)
    try:
        moves = catalog.label_moves(args.name)
    except UnknownError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    moves = moves[: args.limit] if args.limit is not None else moves
    if not moves and not args.json:
        print(f"no label move of {args.name} is recorded in {catalog.registry_root}")
    for move in moves:
        print(json.dumps(move, sort_keys=True) if args.json else describe_move(move))
    return 0


if __name__ == "__main__":
    sys.exit(main())
