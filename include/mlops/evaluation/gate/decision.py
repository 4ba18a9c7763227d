"""The gate's decision: every check's outcome, the verdict, and its record.

:func:`decide` runs the checks of :mod:`.rules` on a candidate and returns a
:class:`GateDecision`, which round-trips through the JSON of ``decision.json``
(:meth:`GateDecision.to_dict` / :meth:`GateDecision.from_dict`) and renders as
Markdown for run reports and model cards.

``force=True`` (a manual override from the trigger form) makes the gate pass,
but the decision records ``override=True`` and keeps the failed checks, so the
model card and the run report show what was overridden.

The gate fails closed: when there is a champion (the ``stable`` version) but
evaluate could not score it (:class:`UnscoredChampion`: a corrupt version, a
model built for other features than today's config), the change thresholds
cannot be checked, so :func:`decide` raises :class:`ChampionUnscoredError`
(bad input, exit 3) instead of deciding.  ``accept_without_champion=True`` (a
person's choice on the trigger form) decides as if there were no champion, and
the decision records it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.mlops.config import BUDGET_METRICS, METRICS, GateConfig, ModelConfig
from include.mlops.evaluation.gate.rules import GateCheck, GateError, fmt_number, run_checks

log = logging.getLogger(__name__)

# The trigger form's Param that lets a run decide without an unscored champion.
ACCEPT_WITHOUT_CHAMPION = "accept_without_champion"


@dataclass(frozen=True)
class UnscoredChampion:
    """A champion evaluate could not score: its registry version (None for a plain path), where, and why."""

    version: int | None
    reason: str
    model_uri: str | None = None

    def describe(self) -> str:
        which = f"version {self.version}" if self.version is not None else (self.model_uri or "of unknown origin")
        return f"the champion ({which}) could not be scored: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason, "model_uri": self.model_uri}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | UnscoredChampion | None) -> UnscoredChampion | None:
        if data is None or isinstance(data, UnscoredChampion):
            return data
        version = data.get("version")
        return cls(
            version=int(version) if version is not None else None,
            reason=str(data.get("reason") or "unknown"),
            model_uri=data.get("model_uri"),
        )


class ChampionUnscoredError(GateError):
    """There is a champion, but it could not be scored: the gate fails closed (bad input, exit 3, no retry)."""

    def __init__(self, unscored: UnscoredChampion) -> None:
        self.unscored = unscored
        super().__init__(
            f"the gate fails closed: {unscored.describe()}. Without the champion's figures the change "
            "thresholds (max_regression) cannot be checked, so a model worse than the one serving could pass. "
            "Repair or replace the champion, or trigger the run again with "
            f"{ACCEPT_WITHOUT_CHAMPION}=true to decide on the absolute thresholds and budgets alone "
            "(recorded in decision.json, the version's lineage and its model card)"
        )


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
    # The champion evaluate could not score, when the run decided without it (accept_without_champion).
    champion_unscored: UnscoredChampion | None = None
    accepted_without_champion: bool = False

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

    def lineage_record(self) -> dict[str, Any]:
        """What a registered version's lineage keeps of this decision: whether it was made without its champion."""
        return {
            "accepted_without_champion": self.accepted_without_champion,
            "champion_unscored": self.champion_unscored.to_dict() if self.champion_unscored else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become ``None``); derived fields are included for readers."""
        return {
            "passed": self.passed,
            "override": self.override,
            "forced": self.forced,
            "has_champion": self.has_champion,
            **self.lineage_record(),
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
                champion_unscored=UnscoredChampion.from_dict(data.get("champion_unscored")),
                accepted_without_champion=bool(data.get("accepted_without_champion", False)),
            )
        except (KeyError, TypeError) as exc:
            raise GateError(f"not a gate decision (expected the output of GateDecision.to_dict()): {exc!r}") from None

    def summary(self) -> str:
        if self.override:
            outcome = f"PASSED by override ({len(self.failed_checks)} failed check(s) overridden)"
        else:
            outcome = "PASSED" if self.passed else f"FAILED ({len(self.failed_checks)} failed check(s))"
        return outcome + (", accepted without a champion" if self.accepted_without_champion else "")

    def to_markdown(self) -> str:
        """A Markdown table of every check, for run reports and model cards."""
        lines = [f"**Gate: {self.summary()}**", ""]
        if self.accepted_without_champion and self.champion_unscored:
            lines += [
                f"> **Accepted without a champion**: {self.champion_unscored.describe()}. The run was triggered "
                f"with `{ACCEPT_WITHOUT_CHAMPION}`, so the change thresholds were skipped and only the absolute "
                "thresholds and budgets decided.",
                "",
            ]
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
    champion_unscored: UnscoredChampion | Mapping[str, Any] | None = None,
    accept_without_champion: bool = False,
) -> GateDecision:
    """Check ``candidate`` metrics against ``gate`` and the ``champion``'s metrics.

    ``champion`` is None on the first run (no champion: the change checks are
    skipped) and when evaluate could not score the stable version
    (``champion_unscored`` says which and why).  The latter fails closed with
    :class:`ChampionUnscoredError` unless ``accept_without_champion``, which
    skips the change checks and records that it did.
    """
    unscored = UnscoredChampion.from_dict(champion_unscored) if champion is None else None
    if unscored is not None and not accept_without_champion:
        log.error("Gate fails closed: %s", unscored.describe())
        raise ChampionUnscoredError(unscored)
    why_skipped = f"{unscored.describe()}; accepted without a champion" if unscored else None
    checks = run_checks(candidate, champion, gate, higher_is_better, champion_unavailable=why_skipped)
    checks_passed = all(c.passed for c in checks)
    decision = GateDecision(
        passed=checks_passed or force,
        override=force and not checks_passed,
        checks=checks,
        forced=force,
        has_champion=champion is not None,
        champion_unscored=unscored,
        accepted_without_champion=unscored is not None,
    )
    if unscored is not None:
        log.warning("%s: accepted without a champion, the change thresholds were skipped", unscored.describe())
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
    champion_unscored: UnscoredChampion | Mapping[str, Any] | None = None,
    accept_without_champion: bool = False,
) -> GateDecision:
    """:func:`decide` with the directions of ``config``'s task (``gate`` defaults to ``config.gate``)."""
    directions = {**METRICS[config.task], **BUDGET_METRICS}
    gate = gate if gate is not None else config.gate
    return decide(
        candidate,
        champion,
        gate,
        directions,
        force=force,
        champion_unscored=champion_unscored,
        accept_without_champion=accept_without_champion,
    )


__all__ = [
    "ACCEPT_WITHOUT_CHAMPION",
    "ChampionUnscoredError",
    "GateDecision",
    "UnscoredChampion",
    "decide",
    "decide_for_config",
]
