"""The trigger form: one ``Param`` per setting a user may change for a run.

Every Param has a JSON schema, so the UI form and the REST API refuse bad
values (a negative epoch count, a learning rate of "fast") before a run
starts.  ``None`` means "use the model config's value".
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from include.mlops.config import METRICS, ModelConfig


def lifecycle_params(config: ModelConfig) -> dict[str, Param]:
    train = config.train
    metric_names = sorted(METRICS[config.task])
    bound = {"type": "number"}
    return {
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=10_000,
            title="Epochs",
            description=f"Maximum training epochs (early stopping may end sooner). Empty: {train.epochs} from the config.",
        ),
        "learning_rate": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            title="Learning rate",
            description=f"Adam learning rate, in (0, 1]. Empty: {train.learning_rate} from the config.",
        ),
        "batch_size": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=4096,
            title="Batch size",
            description=f"Training batch size, 1 to 4096. Empty: {train.batch_size} from the config.",
        ),
        "thresholds": Param(
            {},
            type="object",
            title="Gate thresholds",
            description=(
                "Absolute thresholds that replace the config's for the named metrics, e.g. "
                '{"'
                + metric_names[0]
                + '": {"min": 0.5}}. Metrics: '
                + ", ".join(metric_names)
                + ". Empty: the config's."
            ),
            propertyNames={"enum": metric_names},
            additionalProperties={
                "type": "object",
                "properties": {"min": bound, "max": bound},
                "additionalProperties": False,
                "minProperties": 1,
            },
        ),
        "max_regression": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Max regression vs stable",
            description=(
                "Largest relative worsening against the current stable version allowed by the gate, "
                "from 0 (must not be worse) to 1. Empty: the config's per-metric values."
            ),
        ),
        "force_deploy": Param(
            False,
            type="boolean",
            title="Force deploy",
            description="Deploy even if the gate fails. Recorded in the report and the model card as an override.",
        ),
        "skip_deploy": Param(
            False,
            type="boolean",
            title="Skip deploy",
            description="Train and evaluate only: never register or move a serving label in this run.",
        ),
    }


def training_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a run's Params override (unset ones are left to the config)."""
    return {key: params[key] for key in ("epochs", "learning_rate", "batch_size") if params.get(key) is not None}
