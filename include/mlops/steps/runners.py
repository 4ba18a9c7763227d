"""The lifecycle steps' runners: parsed CLI arguments in, the step function's JSON result out.

Each runner imports its step module when it runs, so that declaring the
steps, ``--help`` and the light steps do not pay for TensorFlow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.mlops.config import ModelConfig


def run_snapshot(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.data.snapshot import snapshot

    wait = args.wait_for_data
    if wait is None:
        # Half the step's runtime cap: the other half is left for reading, and the retry waits again.
        wait = config.step_timeout("snapshot").total_seconds() / 2
    return snapshot(config, args.interval_start, args.interval_end, args.out, wait_for_data=wait)


def run_validate(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.data.validate import validate

    return validate(config, args.data, args.out)


def run_train(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.training.train import train

    return train(config, args.data, args.out, overrides=args.overrides)


def champion(config: ModelConfig, choice: str) -> tuple[str | None, int | None]:
    """Resolve ``--champion``: ``auto`` (the last verified version of ``stable``), ``none``, or a path.

    A label an unfinished deploy left on an unverified version is repaired
    first (or, while that deploy still runs, its previous version is used).
    """
    if choice == "none":
        return None, None
    if choice != "auto":
        return choice, None
    from include.mlops import artifact_store
    from include.mlops.deploy.rollback import verified_label_version
    from include.mlops.registry.protocol import VersionNotFoundError

    registry = artifact_store.open_registry()
    version = verified_label_version(registry, config.serving_name, "stable")
    if version is None:
        return None, None
    try:  # on an object store, the version's copy in the local mirror (pulled now)
        folder = artifact_store.local_version_dir(registry, config.serving_name, version)
    except VersionNotFoundError:  # the evaluation reports the champion missing and goes on without it
        folder = registry.version_dir(config.serving_name, version)
    return str(folder), version


def run_evaluate(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.evaluation.evaluate import evaluate

    champion_uri, champion_version = champion(config, args.champion)
    return evaluate(
        config,
        args.candidate,
        args.data,
        args.out,
        champion_uri=champion_uri,
        champion_version=champion_version,
        tflite_uri=args.tflite,
    )


def run_tune_plan(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.tuning import tune_plan

    return tune_plan(config, args.out, overrides=args.overrides)


def run_tune_trial(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.tuning import run_trial

    return run_trial(config, args.data, args.out, trial=args.trial, hparams=args.hparams)


def run_tune_select(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.optimize.tuning import select_best

    return select_best(config, args.plan, args.trials_dir, args.out)


def run_compress(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
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


def run_register(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
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


def run_deploy(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
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
        server_poll_seconds=args.server_poll_seconds,
        reason=args.reason,
        requested_by=args.requested_by,
        stable_first=args.stable_first,
    )


def run_undeploy(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    from include.mlops.deploy.undeploy import undeploy

    return undeploy(
        config,
        label=args.label,
        out=args.out,
        server_url=args.server_url,
        timeout=args.timeout,
        server_poll_seconds=args.server_poll_seconds,
        reason=args.reason,
        requested_by=args.requested_by,
    )


def run_drift(config: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
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
