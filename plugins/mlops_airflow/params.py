"""The trigger form: one ``Param`` per setting a user may change for a run.

Every Param has a JSON schema, so the UI form and the REST API refuse bad
values (a negative epoch count, a learning rate of "fast") before a run
starts.  ``None`` means "use the model config's value"; every Param accepts it,
which is also what tells Airflow's form that no Param is required (the UI marks
a Param required when its schema's ``type`` excludes ``null``).

Airflow does not refuse conf keys that are not Params (it adds them as
untyped Params), so :func:`check_run_conf` is the rule the run's first task
applies before any work.  The first task also refuses gate thresholds that no
model can meet (:func:`check_gate_params`), with the same code the gate
applies them with (:func:`run_gate_config`).

Parse cost: every DAG validates its Params against their schemas, and every
operator deep-copies the DAG's Params (several times for operators with
nested ``__init__``).  Two choices keep that cheap, see :func:`_schema`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from airflow.sdk import Param

from include.mlops.config import METRICS, GateConfig, ModelConfig
from include.mlops.evaluation import gate as gate_lib

# jsonschema checks a schema against its meta-schema on every validation; draft 7's meta-schema
# is one small document, while the default (2020-12) resolves a dozen vocabularies through $refs,
# about 5x slower.  Draft 7 has every keyword these schemas use.
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
# The Params the gates read; each gate's decision.json records them.
GATE_PARAMS = ("thresholds", "max_regression", "force_deploy", gate_lib.ACCEPT_WITHOUT_CHAMPION, "skip_deploy")
# Placeholders for an example bound when the config has no threshold on the metric.
_EXAMPLE_MIN = 0.5
_EXAMPLE_MAX = 1.0


class SharedSchema(dict):
    """A read-only JSON schema that deep copies share instead of copying.

    Airflow deep-copies a DAG's ``ParamsDict`` for every operator of the DAG
    (and again for each ``__init__`` in the operator's class hierarchy); with
    plain dict schemas that copying costs more than the rest of building the
    DAG.  Nothing changes a Param's schema after it is made, so the copies can
    share it; writes raise so that this stays true.  It is still a ``dict``,
    so serialization and jsonschema see an ordinary schema.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedSchema:
        return self

    def __copy__(self) -> SharedSchema:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedSchema, (dict(self),))

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a Param's schema is shared by every copy of the Param and must not change")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return SharedSchema({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_freeze(item) for item in value]
    return value


def _param(default: Any, description: str, **schema: Any) -> Param:
    """A Param whose schema names draft 7 and is shared by the Param's copies."""
    return Param(default, description=description, schema=_freeze({"$schema": SCHEMA_DIALECT, **schema}))


def threshold_example(config: ModelConfig) -> dict[str, dict[str, float]]:
    """An example ``thresholds`` override for ``config``, each bound on the metric's bad side.

    A minimum for metrics where higher is better (r2, accuracy), a maximum for
    error metrics (mae, log_loss); the values are the config's own thresholds
    where it has them.
    """
    directions = METRICS[config.task]
    example: dict[str, dict[str, float]] = {}
    for higher_is_better in (True, False):
        metric = next((m for m in config.metrics if directions[m] is higher_is_better), None)
        if metric is None:
            continue
        side, placeholder = ("min", _EXAMPLE_MIN) if higher_is_better else ("max", _EXAMPLE_MAX)
        configured = config.gate.thresholds.get(metric, {}).get(side)
        example[metric] = {side: float(configured if configured is not None else placeholder)}
    return example


def lifecycle_params(config: ModelConfig) -> dict[str, Param]:
    train = config.train
    metric_names = sorted(METRICS[config.task])
    bound = {"type": "number"}
    return {
        "epochs": _param(
            None,
            f"Maximum training epochs (early stopping may end sooner). Empty: {train.epochs} from the config.",
            type=["null", "integer"],
            minimum=1,
            maximum=10_000,
            title="Epochs",
        ),
        "learning_rate": _param(
            None,
            f"Adam learning rate, in (0, 1]. Empty: {train.learning_rate} from the config.",
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            title="Learning rate",
        ),
        "batch_size": _param(
            None,
            f"Training batch size, 1 to 4096. Empty: {train.batch_size} from the config.",
            type=["null", "integer"],
            minimum=1,
            maximum=4096,
            title="Batch size",
        ),
        "thresholds": _param(
            {},
            (
                "Absolute thresholds that replace the config's for the named metrics: a minimum where higher "
                "is better, a maximum for error metrics, e.g. "
                + json.dumps(threshold_example(config))
                + ". Metrics: "
                + ", ".join(metric_names)
                + ". A bound no model can meet (r2 above 1, a negative error, a max on a metric where higher "
                "is better) fails the run's first task. Empty: the config's."
            ),
            type=["null", "object"],
            title="Gate thresholds",
            propertyNames={"enum": metric_names},
            additionalProperties={
                "type": "object",
                "properties": {"min": bound, "max": bound},
                "additionalProperties": False,
                "minProperties": 1,
            },
        ),
        "max_regression": _param(
            None,
            (
                "Largest relative worsening against the current stable version allowed by the gate, "
                "from 0 (must not be worse) to 1. Empty: the config's per-metric values."
            ),
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Max regression vs stable",
        ),
        "force_deploy": _param(
            False,
            "Deploy even if the gate fails. Recorded in the report and the model card as an override.",
            type=["null", "boolean"],
            title="Force deploy",
        ),
        gate_lib.ACCEPT_WITHOUT_CHAMPION: _param(
            False,
            (
                "Let the gate decide without the stable version when evaluate could not score it (a corrupt "
                "version, or one built for other features than today's config). Off: such a run fails at the "
                "gate, since no candidate may skip the regression check against stable. On: the absolute "
                "thresholds and budgets alone decide; recorded in decision.json, the version's lineage and its "
                "model card."
            ),
            type=["null", "boolean"],
            title="Accept without champion",
        ),
        "skip_deploy": _param(
            False,
            "Train and evaluate only: never register or move a serving label in this run.",
            type=["null", "boolean"],
            title="Skip deploy",
        ),
    }


class RefusedParamsError(ValueError):
    """A run was triggered with settings it must not start with; the first task fails without retrying."""


class UnknownParamsError(RefusedParamsError):
    """A run was triggered with conf keys that are not Params of the DAG."""


class ImpossibleGateError(RefusedParamsError):
    """A run was triggered with gate thresholds that no model can meet, or that would fail the better models."""


def check_run_conf(conf: Mapping[str, Any] | None, allowed: Iterable[str]) -> None:
    """Refuse a run conf with keys that are not Params: a misspelt setting must not be silently ignored."""
    allowed = sorted(allowed)
    unknown = sorted(set(conf or {}) - set(allowed))
    if unknown:
        raise UnknownParamsError(
            f"the run was triggered with unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"this DAG accepts: {', '.join(allowed)}. Nothing was run: trigger it again with the right names."
        )


def run_gate_config(config: ModelConfig, params: Mapping[str, Any]) -> GateConfig:
    """The gate of this run: the config's, with the run's ``thresholds`` and ``max_regression``.

    Raises :class:`~include.mlops.evaluation.gate.GateError` for an override
    the gate refuses (:func:`~include.mlops.evaluation.gate.with_overrides`).
    """
    return gate_lib.with_overrides(
        config.gate, params.get("thresholds"), params.get("max_regression"), metrics=config.metrics
    )


def check_gate_params(config: ModelConfig, params: Mapping[str, Any]) -> None:
    """Refuse gate settings that no model can meet, before any work rather than at the gate."""
    try:
        run_gate_config(config, params)
    except gate_lib.GateError as exc:
        raise ImpossibleGateError(
            f"the run was triggered with a gate setting that is refused: {exc}. Nothing was run: trigger it "
            "again with bounds that a model can meet (empty: the config's own)."
        ) from None


def training_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters a run's Params override (unset ones are left to the config)."""
    return {key: params[key] for key in ("epochs", "learning_rate", "batch_size") if params.get(key) is not None}
