"""The lifecycle's steps, in flowchart order: the one table of steps.

Adding a step is one :func:`~include.mlops.steps.declaration.declare` here (and
its runner in :mod:`include.mlops.steps.runners`): the CLI subcommand, the
default runtime cap in the model configs' ``timeouts``, the exit codes, the
step pod's GPUs and size, and the result check all follow from it.
"""

from __future__ import annotations

from include.mlops.steps import runners
from include.mlops.steps.declaration import Argument, declare, parse_csv, parse_datetime, parse_json_object

# Arguments that several steps share.
DATA = Argument("--data", required=True, help="the snapshot's data.parquet")
OVERRIDES = Argument("--overrides", type=parse_json_object, default={}, help="JSON object of hyperparameters")
CANDIDATE = Argument("--candidate", required=True, help="the candidate SavedModel folder")
TFLITE = Argument("--tflite", help="a quantized .tflite variant of the candidate")

# Error types meaning "the input is bad" (exit 3), by module.  Deliberately absent:
# - deploy.DeployVerificationError: the model server did not become ready, could not be reached or answered
#   wrongly, and the label was moved back.  That is the server's state, not the input's: a retry may pass.
# - snapshot.PartitionNotLandedError: the data may still land; the task retries after its delay.
CORRUPT_VERSION = ("include.mlops.registry.protocol", "CorruptVersionError")
MODELING = ("include.mlops.training.errors", "ModelingError")
# Training is seeded from the config, so a run that diverges (non-finite loss) diverges again.
DIVERGED = ("include.mlops.training.train", "TrainingError")
TUNING = ("include.mlops.optimize.tuning", "TuningError")

declare(
    "snapshot",
    "materialise the data interval's training data",
    runners.run_snapshot,
    arguments=(
        Argument("--interval-start", type=parse_datetime, required=True),
        Argument("--interval-end", type=parse_datetime, required=True),
        Argument(
            "--wait-for-data",
            type=float,
            help="seconds to wait for missing partitions to land (default: half the snapshot timeout)",
        ),
    ),
    bad_input=(("include.mlops.data.sources", "SnapshotError"),),
    result_keys=("data_uri", "sha256", "rows"),
)
declare(
    "validate",
    "run the model's Great Expectations suite on a snapshot",
    runners.run_validate,
    arguments=(DATA,),
    bad_input=(
        ("include.mlops.data.validate", "DataValidationError"),
        ("include.mlops.data.validate", "SuiteNotFoundError"),
    ),
    result_keys=("success", "result_uri"),
)
declare(
    "train",
    "train the Keras model and export a SavedModel",
    runners.run_train,
    arguments=(DATA, OVERRIDES),
    timeout_s=7200,
    bad_input=(MODELING, DIVERGED),
    gpus=True,
    heavy=True,
    result_keys=("model_uri", "hparams", "val_loss"),
)
declare(
    "evaluate",
    "compute metrics on the held-out split, against the champion",
    runners.run_evaluate,
    arguments=(
        DATA,
        CANDIDATE,
        TFLITE,
        Argument("--champion", default="auto", help="auto (the stable version), none, or a SavedModel path"),
    ),
    timeout_s=1800,
    bad_input=(CORRUPT_VERSION, MODELING),
    heavy=True,
    result_keys=("metrics", "model_uri", "tflite_uri", "champion", "champion_unavailable", "report_uri"),
)
declare(
    "tune-plan",
    "plan the optimize branch's tuning trials (Optuna, seeded)",
    runners.run_tune_plan,
    arguments=(OVERRIDES,),
    timeout_s=300,
    bad_input=(TUNING,),
    result_keys=("plan_uri", "trials", "min_successful"),
)
declare(
    "tune-trial",
    "train one tuning trial and export it",
    runners.run_tune_trial,
    arguments=(
        DATA,
        Argument("--trial", type=int, required=True, help="the trial's index in the plan"),
        Argument("--hparams", type=parse_json_object, required=True, help="JSON: the trial's hyperparameters"),
    ),
    timeout_s=7200,
    bad_input=(TUNING, MODELING, DIVERGED),
    gpus=True,
    heavy=True,
    result_keys=("trial", "hparams", "val_loss", "model_uri", "weights_uri"),
)
declare(
    "tune-select",
    "choose the best tuning trial on validation loss",
    runners.run_tune_select,
    arguments=(
        Argument("--plan", required=True, help="tune-plan's plan.json"),
        Argument("--trials-dir", required=True, help="the folder holding one output folder per trial"),
    ),
    bad_input=(TUNING,),
    result_keys=("model_uri", "weights_uri", "hparams", "trials_uri"),
)
declare(
    "compress",
    "TFLite variants of the chosen model, kept within the compress budgets",
    runners.run_compress,
    arguments=(
        DATA,
        Argument("--candidate", required=True, help="the chosen SavedModel folder (tune_select's model)"),
        Argument("--weights", help="the chosen trial's weights.npz (for the pruned and qat variants)"),
        Argument("--hparams", type=parse_json_object, help="JSON object: the chosen trial's hyperparameters"),
        Argument("--trials", help="tune_select's trials.json, shown in the report"),
        Argument("--failed", type=parse_csv, default=[], help="comma-separated gate checks that failed"),
    ),
    timeout_s=7200,
    bad_input=(MODELING,),
    heavy=True,
    result_keys=("model_uri", "tflite_uri", "report_uri"),
)
declare(
    "register",
    "write a new registry version (atomic, never overwrites)",
    runners.run_register,
    arguments=(
        CANDIDATE,
        TFLITE,
        Argument("--evaluation", required=True, help="the evaluate step's output folder"),
        Argument("--lineage", type=parse_json_object, required=True, help="JSON: dag_id, run_id, interval"),
        Argument("--gate", help="the gate task's decision.json"),
    ),
    bad_input=(("include.mlops.registry.register", "CandidateModelError"), CORRUPT_VERSION, MODELING),
    result_keys=("version", "version_dir"),
)
declare(
    "deploy",
    "move a serving label to a registered version",
    runners.run_deploy,
    arguments=(
        Argument("--version", type=int, required=True),
        Argument("--label", default="stable"),
        Argument(
            "--server-url",
            help="model server base URL (e.g. http://localhost:8501); verifies the deploy and rolls back on failure",
        ),
        Argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to serve it"),
        Argument("--data", help="held-out rows for the smoke request (snapshot folder or predictions.parquet)"),
        Argument("--tolerance", type=float, default=1e-4, help="allowed rtol/atol of served vs offline answers"),
        Argument(
            "--server-poll-seconds",
            type=float,
            default=1.0,
            help="how often the server re-reads models.config (TF Serving's --model_config_file_poll_wait_seconds); "
            "a move counts as done once every answer agreed for that long",
        ),
        Argument("--reason", help="why the label moves, for the model's audit log (e.g. 'gate passed')"),
        Argument("--requested-by", help="who asked for the move (the run's triggering user), for the audit log"),
        Argument(
            "--stable-first",
            action="store_true",
            help="when the model has no stable version yet, deploy to stable instead (a canary's first version)",
        ),
    ),
    timeout_s=1200,
    bad_input=(
        CORRUPT_VERSION,
        ("include.mlops.registry.protocol", "VersionNotFoundError"),
        ("include.mlops.deploy.errors", "ServedBytesError"),
        ("include.mlops.deploy.errors", "InfraValidationError"),
    ),
    result_keys=("version", "previous", "label", "changed"),
)
declare(
    "undeploy",
    "take a label other than stable (a finished or aborted canary) off the model",
    runners.run_undeploy,
    arguments=(
        Argument("--label", default="canary"),
        Argument("--server-url", help="model server base URL; the step waits until the label no longer resolves"),
        Argument("--timeout", type=float, default=120.0, help="seconds to wait for the server"),
        Argument(
            "--server-poll-seconds",
            type=float,
            default=1.0,
            help="how often the server re-reads models.config (TF Serving's --model_config_file_poll_wait_seconds)",
        ),
        Argument("--reason", help="why the label goes (e.g. 'canary promoted'), for the model's audit log"),
        Argument("--requested-by", help="who asked for it (the run's triggering user or approver), for the audit log"),
    ),
    bad_input=(("include.mlops.deploy.undeploy", "ProtectedLabelError"),),
    result_keys=("label", "removed", "version"),
)
declare(
    "drift",
    "compare the window's logged requests with the training reference",
    runners.run_drift,
    arguments=(
        Argument("--window-start", type=parse_datetime, required=True, help="ISO datetime, inclusive"),
        Argument("--window-end", type=parse_datetime, required=True, help="ISO datetime, exclusive"),
        Argument("--pushgateway", help="Pushgateway base URL to push the drift scores to"),
        Argument("--registry", help="the registry folder (default: <artifact root>/models)"),
        Argument("--predictions-root", help="folder holding predictions/<model>/ (default: the artifact root)"),
    ),
    bad_input=(("include.mlops.monitoring.drift", "DriftInputError"), CORRUPT_VERSION),
    result_keys=("status", "drifted", "score", "result_uri"),
)
