"""The model gate: TFX Evaluator semantics as a pure function (see ``rules``)."""

from include.mlops.evaluation.gate.rules import *  # noqa: F403
