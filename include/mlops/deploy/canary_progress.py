"""The canary's progression through its steps, check by check: pure, no I/O.

:func:`advance` takes the state and one :class:`~include.mlops.deploy.canary_analysis.CheckResult`:

``pass``          the next step (``next_step``), or ``promote`` after the last step passed
``fail``          one more failed check: ``abort`` at ``failure_limit``, else ``repeat`` the step
``inconclusive``  one more inconclusive check: ``abort`` at ``inconclusive_limit``, else ``repeat``

The counters run over the whole analysis and a pass resets neither, as Flagger's
failed-checks counter, which only a new analysis (a new revision) sets back to 0
(https://docs.flagger.app/usage/deployment-strategies, "Canary Release": "increment
the failed checks counter; check if the number of failed checks reached the
threshold"; fluxcd/flagger#30).  A canary that fails every other check is aborted,
not promoted.

:class:`CanaryState` travels through Airflow's deferral kwargs: :meth:`CanaryState.to_dict`
is JSON and :meth:`CanaryState.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from include.mlops.config.deploy import CanaryConfig
from include.mlops.deploy.canary_analysis import CheckResult

Action = Literal["next_step", "repeat", "promote", "abort"]
Finished = Literal["promoted", "aborted"]
_FINISHED: tuple[str, ...] = ("promoted", "aborted")


@dataclasses.dataclass(frozen=True)
class CanaryState:
    """Where an analysis stands: the step (an index into ``steps``), the counters, and every check so far."""

    step_index: int = 0
    failed_checks: int = 0
    inconclusive_checks: int = 0
    history: tuple[CheckResult, ...] = ()
    finished: Finished | None = None

    def __post_init__(self) -> None:
        for name in ("step_index", "failed_checks", "inconclusive_checks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"canary state: {name} must be a whole number >= 0, got {value!r}")
        if self.finished is not None and self.finished not in _FINISHED:
            raise ValueError(f"canary state: finished must be one of {', '.join(_FINISHED)} or None")

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_index": self.step_index,
            "failed_checks": self.failed_checks,
            "inconclusive_checks": self.inconclusive_checks,
            "history": [result.to_dict() for result in self.history],
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryState:
        return cls(
            step_index=data["step_index"],
            failed_checks=data["failed_checks"],
            inconclusive_checks=data["inconclusive_checks"],
            history=tuple(CheckResult.from_dict(item) for item in data["history"]),
            finished=data.get("finished"),
        )


def _check_step(state: CanaryState, config: CanaryConfig) -> None:
    if state.step_index >= len(config.steps):
        raise ValueError(
            f"canary state is at step {state.step_index + 1} but the config has {len(config.steps)} "
            f"steps {list(config.steps)}; was deploy.canary.steps changed during the analysis?"
        )


def current_weight(state: CanaryState, config: CanaryConfig) -> int:
    """The percent of the stable label's traffic the canary gets now: 100 once promoted, 0 once aborted."""
    if state.finished == "promoted":
        return 100
    if state.finished == "aborted":
        return 0
    _check_step(state, config)
    return config.steps[state.step_index]


def advance(state: CanaryState, result: CheckResult, config: CanaryConfig) -> tuple[CanaryState, Action]:
    """The state after ``result`` and what to do now (see the module docstring)."""
    if state.finished is not None:
        raise ValueError(f"the canary analysis is over ({state.finished}); start a new one for a new version")
    _check_step(state, config)
    state = dataclasses.replace(state, history=(*state.history, result))
    if result.outcome == "pass":
        if state.step_index + 1 == len(config.steps):
            return dataclasses.replace(state, finished="promoted"), "promote"
        return dataclasses.replace(state, step_index=state.step_index + 1), "next_step"
    if result.outcome == "fail":
        state = dataclasses.replace(state, failed_checks=state.failed_checks + 1)
        reached = state.failed_checks >= config.failure_limit
    elif result.outcome == "inconclusive":
        state = dataclasses.replace(state, inconclusive_checks=state.inconclusive_checks + 1)
        reached = state.inconclusive_checks >= config.inconclusive_limit
    else:
        raise ValueError(f"unknown check outcome {result.outcome!r}")
    if reached:
        return dataclasses.replace(state, finished="aborted"), "abort"
    return state, "repeat"
