"""The gate's decision: every check's outcome, the verdict, and its record.

:func:`decide` runs the checks of :mod:`.rules` on a candidate and returns a
:class:`GateDecision`, which round-trips through the JSON of ``decision.json``
(:meth:`GateDecision.to_dict` / :meth:`GateDecision.from_dict`) and renders as
Markdown for run reports and model cards.

``force=True`` (a manual override from the trigger form) makes the gate pass,
but the decision records ``override=True`` and keeps the failed checks, so the
model card and the run report show what was overridden.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.mlops.config import BUDGET_METRICS, METRICS, GateConfig, ModelConfig
from include.mlops.evaluation.gate.rules import GateCheck, GateError, fmt_number, run_checks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """The gate's outcome with every check, as written to the run report and the model card.

    ``passed`` is what the pipeline branches on.  ``override`` is True when the
    checks failed and ``force`` passed the candidate anyway; ``forced`` records
    that a force was requested at all (even when it was not needed).
    """

    passed: bool
    override: bool
    checks: tuple[GateCheck, ...]
    forced: bool = False
    has_champion: bool = False
    # Why the stable version was not compared, when evaluate could not verify it (None: no champion yet).
    champion_unavailable: str | None = None

    @property
    def failed_checks(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def checks_passed(self) -> bool:
        """Whether the candidate passed on its merits, ignoring any force."""
        return not self.failed_checks

    @property
    def failed_budgets(self) -> tuple[str, ...]:
        """Budget metrics (size_mb, latency_ms) over budget: what quantization should fix."""
        return tuple(dict.fromkeys(c.metric for c in self.failed_checks if c.kind == "budget"))

    @property
    def failed_metrics(self) -> tuple[str, ...]:
        """Every metric with at least one failed check, in check order, without repeats."""
        return tuple(dict.fromkeys(c.metric for c in self.failed_checks))

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(c.message for c in self.failed_checks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become ``None``); derived fields are included for readers."""
        return {
            "passed": self.passed,
            "override": self.override,
            "forced": self.forced,
            "has_champion": self.has_champion,
            "champion_unavailable": self.champion_unavailable,
            "checks": [c.to_dict() for c in self.checks],
            "reasons": list(self.reasons),
            "failed_budgets": list(self.failed_budgets),
            "failed_metrics": list(self.failed_metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateDecision:
        try:
            checks = tuple(GateCheck.from_dict(c) for c in data["checks"])
            return cls(
                passed=bool(data["passed"]),
                override=bool(data.get("override", False)),
                checks=checks,
                forced=bool(data.get("forced", False)),
                has_champion=bool(data.get("has_champion", False)),
                champion_unavailable=data.get("champion_unavailable"),
            )
        except (KeyError, TypeError) as exc:
            raise GateError(f"not a gate decision (expected the output of GateDecision.to_dict()): {exc!r}") from None

    def summary(self) -> str:
        if self.override:
            return f"PASSED by override ({len(self.failed_checks)} failed check(s) overridden)"
        return "PASSED" if self.passed else f"FAILED ({len(self.failed_checks)} failed check(s))"

    def to_markdown(self) -> str:
        """A Markdown table of every check, for run reports and model cards."""
        lines = [f"**Gate: {self.summary()}**", ""]
        if self.champion_unavailable:
            lines += [f"{self.champion_unavailable}: change thresholds were skipped.", ""]
        elif not self.has_champion:
            lines += ["No champion (first version): change thresholds were skipped.", ""]
        if not self.checks:
            lines.append("The gate has no checks configured.")
            return "\n".join(lines) + "\n"
        lines += [
            "| kind | metric | value | bound | champion | result |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            result = "skipped" if c.skipped else ("pass" if c.passed else "**FAIL**")
            bound = f"{c.comparison} {fmt_number(c.bound)}" if c.bound is not None else "-"
            lines.append(
                f"| {c.kind} | {c.metric} | {fmt_number(c.value)} | {bound} | {fmt_number(c.champion_value)} | {result} |"
            )
        if self.reasons:
            lines += ["", "Failed checks:" + (" (overridden)" if self.override else ""), ""]
            lines += [f"- {reason}" for reason in self.reasons]
        return "\n".join(lines) + "\n"


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    gate: GateConfig,
    higher_is_better: Mapping[str, bool],
    *,
    force: bool = False,
    champion_unavailable: str | None = None,
) -> GateDecision:
    """Check ``candidate`` metrics against ``gate`` and the ``champion``'s metrics.

    ``champion`` is None on the first run, and when the stable version could not
    be compared (``champion_unavailable`` says why: evaluate found it corrupt);
    the change checks are then skipped and say which of the two it was.
    """
    checks = run_checks(candidate, champion, gate, higher_is_better, champion_unavailable=champion_unavailable)
    checks_passed = all(c.passed for c in checks)
    decision = GateDecision(
        passed=checks_passed or force,
        override=force and not checks_passed,
        checks=checks,
        forced=force,
        has_champion=champion is not None,
        champion_unavailable=champion_unavailable if champion is None else None,
    )
    if decision.override:
        log.warning(
            "Gate forced open; overriding %d failed check(s): %s", len(decision.reasons), "; ".join(decision.reasons)
        )
    elif decision.passed:
        log.info("Gate passed (%d checks)", len(checks))
    else:
        log.info("Gate failed: %s", "; ".join(decision.reasons))
    return decision


def decide_for_config(
    config: ModelConfig,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    gate: GateConfig | None = None,
    force: bool = False,
    champion_unavailable: str | None = None,
) -> GateDecision:
    """:func:`decide` with the directions of ``config``'s task (``gate`` defaults to ``config.gate``)."""
    directions = {**METRICS[config.task], **BUDGET_METRICS}
    gate = gate if gate is not None else config.gate
    return decide(candidate, champion, gate, directions, force=force, champion_unavailable=champion_unavailable)


__all__ = ["GateDecision", "decide", "decide_for_config"]
