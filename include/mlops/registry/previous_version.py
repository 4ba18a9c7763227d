"""Which version a label goes back to: the one it named before its current version, from the audit log.

The rule, over the model's label moves (:mod:`include.mlops.registry.label_log`,
oldest first): the last move of the label **to** its current version gives,
in its ``from``, the version to go back to.  Moves that only undid another
move are skipped, because their ``from`` is a version that never served as
verified:

* a deploy's roll back of its own failed move (reason ``roll back of a failed deploy ...``),
* the repair of a move that a dead deploy left (reason ``repair: ...``),
* a rollback (reason ``rollback: ...``, the rollback DAG's move): its ``from``
  is the version that was rolled back for a reason, so going "back" to it
  would undo the rollback.  Skipping it finds the move that first put the
  current version on the label, so repeated rollbacks walk back through the
  history, never forth between two versions.

None, with the reason, when the current version was the label's first
(``from`` none), when the label names no version, or when the log has no
qualifying move to it (a label set before the log existed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from include.mlops.registry.label_log import FAILED_DEPLOY_REASON, REPAIR_REASON, ROLLBACK_REASON

SKIPPED_REASONS = (FAILED_DEPLOY_REASON, REPAIR_REASON, ROLLBACK_REASON)


@dataclass(frozen=True)
class PreviousVersion:
    """The version to go back to (None: there is none) and the sentence that says why."""

    version: int | None
    reason: str
    move: Mapping[str, Any] | None = None  # the move whose ``from`` it is


def move_reason(move: Mapping[str, Any]) -> str:
    return str(move.get("reason") or "")


def is_rollback(move: Mapping[str, Any]) -> bool:
    """Whether ``move`` was a rollback (the rollback DAG's move, by hand or requested by the monitor)."""
    return move_reason(move).startswith(ROLLBACK_REASON)


def undoes_a_move(move: Mapping[str, Any]) -> bool:
    """Whether ``move`` undid another move: a rollback, a failed deploy's roll back, or a repair."""
    return move_reason(move).startswith(SKIPPED_REASONS)


def last_move_to(moves: Sequence[Mapping[str, Any]], label: str, version: int) -> Mapping[str, Any] | None:
    """The newest move of ``label`` to ``version`` (any reason), or None."""
    return next((m for m in reversed(moves) if m.get("label") == label and m.get("to") == version), None)


def previous_version(moves: Sequence[Mapping[str, Any]], current: int | None, label: str = "stable") -> PreviousVersion:
    """The version ``label`` named before ``current`` (see the module docstring); ``moves`` oldest first."""
    if current is None:
        return PreviousVersion(None, f"label {label!r} names no version")
    skipped = 0
    for move in reversed(moves):
        if move.get("label") != label or move.get("to") != current:
            continue
        if undoes_a_move(move):
            skipped += 1
            continue
        before = move.get("from")
        if before is None:
            return PreviousVersion(None, f"version {current} was the first version of {label!r}", move)
        return PreviousVersion(
            int(before), f"{label!r} named version {before} before version {current} (moved at {move.get('at')})", move
        )
    undone = f" ({skipped} move(s) back to it only undid others)" if skipped else ""
    return PreviousVersion(None, f"the audit log has no move of {label!r} to version {current}{undone}")
