"""The step CLI: ``python -m include.mlops <step> --model NAME ...``.

Every step reads its inputs by path, writes its outputs under ``--out`` and
prints one JSON result (paths and metrics, a few KB at most) as the last line
of stdout.  ``--result-file`` also writes it to a file, which is how the
Airflow operators pick it up (on the container backends, from the shared
artifact root).

Exit codes: 0 success; 3 the input is bad, so retrying cannot help (bad
usage, bad data, an invalid config, a missing expectation suite, a corrupt
model, a training run that diverges under the config's fixed seeds); 1
anything else, which the task retries (a model server that did not answer,
data that has not landed yet, a crash).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from include.mlops.artifacts import atomic_write_json, registry_root, to_jsonable, use_shared_umask
from include.mlops.config import ConfigError, ModelConfig, find_model_config
from include.mlops.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, BadInputError

log = logging.getLogger("include.mlops")


class _ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors exit 3 (bad input), not argparse's 2.

    A wrong flag or value fails the same way on every retry, so it is bad input
    like an invalid config.  (Subparsers inherit this class.)
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _datetime(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 datetime, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def _csv(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


# --------------------------------------------------------------------------- steps
# Each runner takes the parsed config and arguments and returns the JSON result.
# Step modules are imported here, inside the runners, so that ``--help`` and
# the light steps do not pay for TensorFlow.


def _run_snapshot(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.data.snapshot import snapshot

    wait = args.wait_for_data
    if wait is None:
        # Half the step's runtime cap: the other half is left for reading, and the retry waits again.
        wait = config.step_timeout("snapshot").total_seconds() / 2
    return snapshot(config, args.interval_start, args.interval_end, args.out, wait_for_data=wait)


def _run_validate(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.data.validate import validate

    return validate(config, args.data, args.out)


def _run_train(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.training.train import train

    return train(config, args.data, args.out, overrides=args.overrides)


def _champion(config: ModelConfig, choice: str) -> tuple[str | None, int | None]:
    """Resolve ``--champion``: ``auto`` (the version labelled stable), ``none``, or a path."""
    if choice == "none":
        return None, None
    if choice != "auto":
        return choice, None
    from include.mlops.registry.filesystem import Registry

    registry = Registry(registry_root())
    version = registry.label_version(config.serving_name, "stable")
    if version is None:
        return None, None
    return str(registry.version_dir(config.serving_name, version)), version


def _run_evaluate(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.evaluation.evaluate import evaluate

    champion_uri, champion_version = _champion(config, args.champion)
    return evaluate(
        config,
        args.candidate,
        args.data,
        args.out,
        champion_uri=champion_uri,
        champion_version=champion_version,
        tflite_uri=args.tflite,
    )


def _run_tune_plan(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.tuning import tune_plan

    return tune_plan(config, args.out, overrides=args.overrides)


def _run_tune_trial(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.tuning import run_trial

    return run_trial(config, args.data, args.out, trial=args.trial, hparams=args.hparams)


def _run_tune_select(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.tuning import select_best

    return select_best(config, args.plan, args.trials_dir, args.out)


def _run_register(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.registry.register import register_model

    # The gate task's record: {"decision": GateDecision.to_dict(), "route": ..., ...}.
    gate_decision = json.loads(Path(args.gate).read_text())["decision"] if args.gate else None
    return register_model(
        config,
        args.candidate,
        args.evaluation,
        lineage=args.lineage,
        gate_decision=gate_decision,
        tflite_uri=args.tflite,
        out=args.out,
    )


def _run_deploy(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.deploy.deploy import deploy

    return deploy(
        config,
        args.version,
        label=args.label,
        out=args.out,
        server_url=args.server_url,
        timeout=args.timeout,
        data_uri=args.data,
        tolerance=args.tolerance,
    )


def _run_drift(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.monitoring.drift import check_drift, summary

    return summary(
        check_drift(
            config,
            window_start=args.window_start,
            window_end=args.window_end,
            out=args.out,
            registry=args.registry,
            predictions_root=args.predictions_root,
            pushgateway_url=args.pushgateway,
        )
    )


def _run_compress(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.compress import compress

    return compress(
        config,
        args.data,
        args.candidate,
        args.out,
        weights_uri=args.weights,
        hparams=args.hparams,
        trials_uri=args.trials,
        failed=args.failed,
    )


STEPS: dict[str, tuple[str, Callable[[ModelConfig, argparse.Namespace], dict[str, Any]]]] = {
    "snapshot": ("materialise the data interval's training data", _run_snapshot),
    "validate": ("run the model's Great Expectations suite on a snapshot", _run_validate),
    "train": ("train the Keras model and export a SavedModel", _run_train),
    "evaluate": ("compute metrics on the held-out split, against the champion", _run_evaluate),
    "tune-plan": ("plan the optimize branch's tuning trials (Optuna, seeded)", _run_tune_plan),
    "tune-trial": ("train one tuning trial and export it", _run_tune_trial),
    "tune-select": ("choose the best tuning trial on validation loss", _run_tune_select),
    "compress": ("TFLite variants of the chosen model, kept within the compress budgets", _run_compress),
    "register": ("write a new registry version (atomic, never overwrites)", _run_register),
    "deploy": ("move a serving label to a registered version", _run_deploy),
    "drift": ("compare the window's logged requests with the training reference", _run_drift),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m include.mlops", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (help_text, _) in STEPS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--model", required=True, help="model config name (a YAML file in the models folder)")
        p.add_argument("--models-dir", help="folder of model configs (default: $MLOPS_MODELS_DIR or include/models)")
        p.add_argument("--out", required=True, help="the step's output folder")
        p.add_argument("--result-file", help="also write the JSON result to this file")
        if name == "snapshot":
            p.add_argument("--interval-start", type=_datetime, required=True)
            p.add_argument("--interval-end", type=_datetime, required=True)
            p.add_argument(
                "--wait-for-data",
                type=float,
                help="seconds to wait for missing partitions to land (default: half the snapshot timeout)",
            )
        if name in ("validate", "train", "evaluate", "tune-trial"):
            p.add_argument("--data", required=True, help="the snapshot's data.parquet")
        if name in ("train", "tune-plan"):
            p.add_argument("--overrides", type=_json_object, default={}, help="JSON object of hyperparameters")
        if name == "tune-trial":
            p.add_argument("--trial", type=int, required=True, help="the trial's index in the plan")
            p.add_argument("--hparams", type=_json_object, required=True, help="JSON: the trial's hyperparameters")
        if name == "tune-select":
            p.add_argument("--plan", required=True, help="tune-plan's plan.json")
            p.add_argument("--trials-dir", required=True, help="the folder holding one output folder per trial")
        if name in ("evaluate", "register"):
            p.add_argument("--candidate", required=True, help="the candidate SavedModel folder")
            p.add_argument("--tflite", help="a quantized .tflite variant of the candidate")
        if name == "evaluate":
            p.add_argument("--champion", default="auto", help="auto (the stable version), none, or a SavedModel path")
        if name == "register":
            p.add_argument("--evaluation", required=True, help="the evaluate step's output folder")
            p.add_argument("--lineage", type=_json_object, required=True, help="JSON: dag_id, run_id, interval")
            p.add_argument("--gate", help="the gate task's decision.json")
        if name == "deploy":
            p.add_argument("--version", type=int, required=True)
            p.add_argument("--label", default="stable")
            p.add_argument(
                "--server-url",
                help="model server base URL (e.g. http://localhost:8501); verifies the deploy and rolls back on failure",
            )
            p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to serve it")
            p.add_argument(
                "--data", help="held-out rows for the smoke request (snapshot folder or predictions.parquet)"
            )
            p.add_argument(
                "--tolerance", type=float, default=1e-4, help="allowed rtol/atol of served vs offline answers"
            )
        if name == "drift":
            p.add_argument("--window-start", type=_datetime, required=True, help="ISO datetime, inclusive")
            p.add_argument("--window-end", type=_datetime, required=True, help="ISO datetime, exclusive")
            p.add_argument("--pushgateway", help="Pushgateway base URL to push the drift scores to")
            p.add_argument("--registry", help="the registry folder (default: <artifact root>/models)")
            p.add_argument(
                "--predictions-root", help="folder holding predictions/<model>/ (default: the artifact root)"
            )
        if name == "compress":
            p.add_argument("--data", required=True, help="the snapshot's data.parquet")
            p.add_argument("--candidate", required=True, help="the chosen SavedModel folder (tune_select's model)")
            p.add_argument("--weights", help="the chosen trial's weights.npz (for the pruned and qat variants)")
            p.add_argument("--hparams", type=_json_object, help="JSON object: the chosen trial's hyperparameters")
            p.add_argument("--trials", help="tune_select's trials.json, shown in the report")
            p.add_argument("--failed", type=_csv, default=[], help="comma-separated gate checks that failed")
    return parser


# Exception types meaning "the input is bad" (exit 3), by module; looked up only if the module is loaded.
# Deliberately absent:
# - deploy.DeployVerificationError: the model server did not become ready, could not be reached or answered
#   wrongly, and the label was moved back.  That is the server's state, not the input's: a retry may pass.
# - snapshot.PartitionNotLandedError: the data may still land; the task retries after its delay.
BAD_INPUT_ERRORS = (
    ("include.mlops.data.validate", "DataValidationError"),
    ("include.mlops.data.validate", "SuiteNotFoundError"),
    ("include.mlops.data.sources", "SnapshotError"),
    ("include.mlops.registry.filesystem", "CorruptVersionError"),
    ("include.mlops.training.modeling", "ModelingError"),
    ("include.mlops.registry.register", "CandidateModelError"),
    # Training is seeded from the config, so a run that diverges (non-finite loss) diverges again.
    ("include.mlops.training.train", "TrainingError"),
    ("include.mlops.monitoring.drift", "DriftInputError"),
    ("include.mlops.optimize.tuning", "TuningError"),
)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning 'the input is bad', imported only if their module already is."""
    errors: list[type[BaseException]] = [ConfigError, BadInputError]
    for module, name in BAD_INPUT_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    # Steps write the shared artifact root, also through libraries that follow the umask (pyarrow, matplotlib).
    use_shared_umask()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    args = build_parser().parse_args(argv)
    try:
        config = find_model_config(args.model, args.models_dir)
        result = to_jsonable(STEPS[args.step][1](config, args))
    except Exception as exc:
        if isinstance(exc, _bad_input_errors()):
            log.error("%s failed: %s", args.step, exc)
            return EXIT_BAD_INPUT
        log.exception("%s failed", args.step)
        return EXIT_FAILED
    if args.result_file:
        atomic_write_json(args.result_file, result)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0
