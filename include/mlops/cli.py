"""The step CLI: ``python -m include.mlops <step> --model NAME ...``.

Every step reads its inputs by path, writes its outputs under ``--out`` and
prints one JSON result (paths and metrics, a few KB at most) as the last line
of stdout.  ``--result-file`` also writes it to a file, which is how the
Airflow operators pick it up (on the container backends, from the shared
artifact root).

The subcommands, their options and their exit codes are generated from the
step declarations in :mod:`include.mlops.steps`; this module adds the
options every step has (``--model``, ``--models-dir``, ``--out``,
``--result-file``) and runs the chosen step.  A few subcommands are no step
(:data:`COMMANDS`): they read and print, write nothing, and take their own
arguments (``python -m include.mlops history <name>``: the model's label moves).

Exit codes: 0 success; 3 the input is bad, so retrying cannot help (bad
usage, bad data, an invalid config, a missing expectation suite, a corrupt
model, a training run that diverges under the config's fixed seeds); 1
anything else, which the task retries (a model server that did not answer,
data that has not landed yet, a crash, a result without a key its step
declares); 143 when SIGTERM stopped it (Airflow's "mark failed" or
``execution_timeout``, a pod deletion): the signal raises
:class:`~include.mlops.exit_codes.StepTerminated`, so the step's clean-up
runs before it exits (a deploy puts its label back).  Which exception types
mean bad input besides a config error and
:class:`~include.mlops.exit_codes.BadInputError` is part of each declaration.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from include.mlops import artifact_store
from include.mlops.artifacts import atomic_write_json, to_jsonable, use_shared_umask
from include.mlops.config import ConfigError, find_model_config
from include.mlops.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_TERMINATED, BadInputError, StepTerminated
from include.mlops.steps import bad_input_errors, get_step, registered_steps

log = logging.getLogger("include.mlops")

__all__ = ["COMMANDS", "EXIT_BAD_INPUT", "EXIT_FAILED", "build_parser", "main"]


def _history(argv: Sequence[str]) -> int:
    from include.mlops.registry.label_history import main as history_main

    return history_main(argv)


# Subcommands that are no step: name -> (help, main taking the arguments after the name, returning the exit code).
COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "history": ("a model's label moves (the audit log), newest first; writes nothing", _history),
}


class _ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors exit 3 (bad input), not argparse's 2.

    A wrong flag or value fails the same way on every retry, so it is bad input
    like an invalid config.  (Subparsers inherit this class.)
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The step CLI's parser: one subcommand per declared step."""
    parser = _ArgumentParser(prog="python -m include.mlops", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, step in registered_steps().items():
        p = sub.add_parser(name, help=step.help, description=step.help)
        p.add_argument("--model", required=True, help="model config name (a YAML file in the models folder)")
        p.add_argument("--models-dir", help="folder of model configs (default: $MLOPS_MODELS_DIR or include/models)")
        p.add_argument("--out", required=True, help="the step's output folder")
        p.add_argument("--result-file", help="also write the JSON result to this file")
        for argument in step.arguments:
            argument.add_to(p)
    for name, (help_text, _) in COMMANDS.items():
        # Listed in --help; its own parser reads the arguments (main hands them over before this parser runs).
        p = sub.add_parser(name, help=f"{help_text} (see {parser.prog} {name} --help)", add_help=False)
        p.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def _is_bad_input(exc: Exception) -> bool:
    """Whether ``exc`` means the input is bad: a config error, a :class:`BadInputError`, or a declared type."""
    return isinstance(exc, (ConfigError, BadInputError, artifact_store.ArtifactStoreError, *bad_input_errors()))


def _raise_step_terminated(signum: int, frame: object) -> NoReturn:
    """SIGTERM: stop the step by raising :class:`StepTerminated`, so its clean-up runs; later ones wait for it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StepTerminated(f"{signal.Signals(signum).name} received; the step cleaned up and stopped")


# Arguments that name no artifact, and the step's result file (written, then pushed).
_NO_ARTIFACT = frozenset({"step", "model", "models_dir"})


def stage_inputs(store: artifact_store.ArtifactStore, args: argparse.Namespace) -> None:
    """On an object-store root: map the arguments' URIs to mirror paths and pull the inputs they name.

    Every string under the root (a URI, or a path in this process's mirror),
    also inside JSON arguments such as ``--lineage``, is an input; ``--out``
    too, so that a retry sees what an earlier try published (a deploy reports
    the version it moved from).  An input the bucket has not published is left
    missing, so the step fails as it does on a folder: with its own message
    about the missing input.
    """
    pulled: set[str] = set()

    def stage(key: str, text: str) -> str:
        local = store.localize(text)
        if key != "result_file" and store.relative(local) is not None and local not in pulled:
            pulled.add(local)
            if not store.pull(local) and key != "out":
                log.warning("%s: --%s %s: nothing is published there in %s", args.step, key.replace("_", "-"), text,
                            store.uri)  # fmt: skip
        return local

    for key, value in vars(args).items():
        if key not in _NO_ARTIFACT:
            setattr(args, key, artifact_store.map_strings(value, lambda text, key=key: stage(key, text)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][1](argv[1:])
    # Steps write the shared artifact root, also through libraries that follow the umask (pyarrow, matplotlib).
    use_shared_umask()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    args = build_parser().parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _raise_step_terminated)
    try:
        store = artifact_store.current()
        if store is not None:
            stage_inputs(store, args)
        config = find_model_config(args.model, args.models_dir)
        # Where the step's own work begins: the task log shows how long the start took before it.
        log.info("%s of model %s: started", args.step, args.model)
        result = to_jsonable(get_step(args.step).run(config, args))
        if store is not None:
            if Path(args.out).exists():
                store.push(args.out)
            result = artifact_store.portable(result)
    except StepTerminated as exc:
        log.error("%s stopped: %s", args.step, exc)
        return EXIT_TERMINATED
    except Exception as exc:
        if _is_bad_input(exc):
            log.error("%s failed: %s", args.step, exc)
            return EXIT_BAD_INPUT
        log.exception("%s failed", args.step)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if args.result_file:
        atomic_write_json(args.result_file, result)
        if store is not None and store.relative(args.result_file) is not None:
            store.push(args.result_file)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0
