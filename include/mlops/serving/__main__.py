"""``python -m include.mlops.serving --registry PATH --port 8501``: run the local model server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from include.mlops import artifact_store
from include.mlops.artifacts import artifact_root, registry_root
from include.mlops.serving.models import BEHAVIOUR_ENV, BEHAVIOURS, DEFAULT_BEHAVIOUR, TFSERVING_BEHAVIOUR
from include.mlops.serving.predlog import add_arguments as add_predlog_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m include.mlops.serving",
        description="Serve the model registry with TensorFlow Serving's REST API (a local stand-in for TF Serving).",
    )
    parser.add_argument("--registry", type=Path, help="the registry folder (default: <artifact root>/models)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's --rest_api_port)")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="how often models.config is checked for changes (TF Serving's --model_config_file_poll_wait_seconds)",
    )
    parser.add_argument(
        "--behaviour",
        choices=BEHAVIOURS,
        default=os.environ.get(BEHAVIOUR_ENV, DEFAULT_BEHAVIOUR),
        help=f"{DEFAULT_BEHAVIOUR}: kinder than TF Serving where docs/serving.md says; {TFSERVING_BEHAVIOUR}: what "
        f"TF Serving does (default: ${BEHAVIOUR_ENV} or {DEFAULT_BEHAVIOUR})",
    )
    parser.add_argument(
        "--prefer-tflite-model",
        "--prefer_tflite_model",
        action="store_true",
        help=f"{TFSERVING_BEHAVIOUR} only: serve model.tflite where a version has one (TF Serving's flag); "
        f"{DEFAULT_BEHAVIOUR} always does",
    )
    parser.add_argument(
        "--allow-version-labels-for-unavailable-models",
        "--allow_version_labels_for_unavailable_models",
        action="store_true",
        help=f"{TFSERVING_BEHAVIOUR} only: a new label may name a version that is not loaded (TF Serving's flag)",
    )
    parser.add_argument(
        "--file-system-poll-seconds",
        type=float,
        default=1.0,
        help=f"{TFSERVING_BEHAVIOUR} only: how often version folders are listed "
        "(TF Serving's --file_system_poll_wait_seconds; 0: once, at start)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger request bodies get 413")
    parser.add_argument(
        "--no-verify-checksums", action="store_true", help="load versions without checking assets.extra/checksums.json"
    )
    parser.add_argument(
        "--mirror-interval-s",
        type=float,
        default=2.0,
        help="with MLOPS_ARTIFACT_ROOT=s3://...: seconds between syncs of the local copy of the registry (default 2)",
    )
    add_predlog_arguments(parser)
    parser.add_argument("--no-predlog", action="store_true", help="do not log predictions")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.behaviour not in BEHAVIOURS:  # argparse does not check a default taken from the environment
        parser.error(f"${BEHAVIOUR_ENV}={args.behaviour!r}: expected one of {', '.join(BEHAVIOURS)}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    import uvicorn

    from include.mlops.serving.app import ServerSettings, create_app

    if args.behaviour != TFSERVING_BEHAVIOUR and (
        args.prefer_tflite_model or args.allow_version_labels_for_unavailable_models
    ):
        logging.getLogger(__name__).warning(
            "--prefer-tflite-model and --allow-version-labels-for-unavailable-models only change the %s behaviour",
            TFSERVING_BEHAVIOUR,
        )
    registry = (args.registry or registry_root()).resolve()
    store = artifact_store.current() if args.registry is None else None
    if store is not None:
        # The registry is in a bucket: serve a local mirror of it, kept in step by a background loop.
        from include.mlops.registry.mirror import MirrorLoop

        MirrorLoop(artifact_store.open_registry(), registry, args.mirror_interval_s).start()
    predlog_root = None if args.no_predlog else (args.predlog_root or (artifact_root())).resolve()
    settings = ServerSettings(
        registry_root=registry,
        poll_seconds=args.poll_seconds,
        max_body_bytes=args.max_body_bytes,
        verify_checksums=not args.no_verify_checksums,
        behaviour=args.behaviour,
        prefer_tflite_model=args.prefer_tflite_model,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        file_system_poll_seconds=args.file_system_poll_seconds,
        predlog_root=predlog_root,
        predlog_sample_rate=args.predlog_sample_rate,
        predlog_queue_size=args.predlog_queue_size,
        predlog_max_rows_per_file=args.predlog_max_rows_per_file,
        predlog_max_files=args.predlog_max_files,
        predlog_flush_seconds=args.predlog_flush_seconds,
    )
    logging.getLogger(__name__).info(
        "Serving %s on http://%s:%d (%s behaviour)", registry, args.host, args.port, args.behaviour
    )
    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
