"""The model gate: TFX Evaluator semantics as a pure function.

A candidate passes absolute thresholds and budgets and must not regress beyond a change threshold
against the ``stable`` champion (:mod:`.rules`); :mod:`.decision` records the verdict, :mod:`.routing`
picks the next task.  DAG files import it at parse time: standard library and config only.
"""

from __future__ import annotations

from include.mlops.evaluation.gate.decision import GateDecision, decide, decide_for_config
from include.mlops.evaluation.gate.routing import GATE_FAIL_ROUTES, ROUTES, route
from include.mlops.evaluation.gate.rules import CHECK_KINDS, GateCheck, GateError, with_overrides

__all__ = [
    "CHECK_KINDS",
    "GATE_FAIL_ROUTES",
    "ROUTES",
    "GateCheck",
    "GateDecision",
    "GateError",
    "decide",
    "decide_for_config",
    "route",
    "with_overrides",
]
