"""The model gate: TFX Evaluator semantics as a pure function.

A candidate passes absolute thresholds and budgets and must not regress beyond a change threshold
against the ``stable`` champion (:mod:`.rules`); :mod:`.overrides` merges (or refuses) the trigger
form's thresholds; :mod:`.decision` records the verdict, failing closed on a champion that could not
be scored; :mod:`.routing` picks the next task.  DAG files import it at parse time: standard library and config only.
"""

from __future__ import annotations

from include.mlops.evaluation.gate.decision import (
    ACCEPT_WITHOUT_CHAMPION,
    ChampionUnscoredError,
    GateDecision,
    UnscoredChampion,
    decide,
    decide_for_config,
)
from include.mlops.evaluation.gate.overrides import check_bound, with_overrides
from include.mlops.evaluation.gate.routing import GATE_FAIL_ROUTES, ROUTES, route
from include.mlops.evaluation.gate.rules import CHECK_KINDS, GateCheck, GateError

__all__ = [
    "ACCEPT_WITHOUT_CHAMPION",
    "CHECK_KINDS",
    "GATE_FAIL_ROUTES",
    "ROUTES",
    "ChampionUnscoredError",
    "GateCheck",
    "GateDecision",
    "GateError",
    "UnscoredChampion",
    "check_bound",
    "decide",
    "decide_for_config",
    "route",
    "with_overrides",
]
