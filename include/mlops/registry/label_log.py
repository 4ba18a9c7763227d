"""The audit log of label moves: one JSON line per change, ``models/<name>/label-moves.jsonl``.

Every edit of a model's labels through the registry (a deploy, its roll back,
a repair, ``set_label`` by hand) appends what changed, when, and from which
process, so that "which version served as stable at 03:00, and who moved it"
has an answer.  Code that knows more (which task moved it, for whom, and why:
the gate passed, a rollback and its reason, the repair of an unfinished move)
says so with :func:`label_move_context`, whose keys every line written inside
it carries.  TF Serving ignores the file: only numeric folders are versions.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts

log = logging.getLogger(__name__)

LOG_NAME = "label-moves.jsonl"
# The keys every line has; a line may carry more (a run, a task, a reason), which readers show as they are.
MOVE_KEYS = ("at", "label", "from", "to", "pid", "host")
# How the ``reason`` of a move starts when the move undid another one or was asked for as a rollback: the deploy's
# roll back of its own failed move, the repair of a move a dead deploy left, and the rollback DAG's move.
FAILED_DEPLOY_REASON = "roll back of a failed deploy"
REPAIR_REASON = "repair:"
ROLLBACK_REASON = "rollback:"
_CONTEXT: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("label_move_context", default=None)


@contextlib.contextmanager
def label_move_context(**details: Any) -> Iterator[None]:
    """Add ``details`` (``reason``, ``requested_by``, ``task``, ...; None values left out) to every move logged inside.

    Nested contexts add to the outer one; an inner key replaces the outer one's.
    """
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in details.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def record_label_moves(model_dir: Path, before: Mapping[str, int], after: Mapping[str, int]) -> list[dict[str, Any]]:
    """Append one line per label whose version changed between ``before`` and ``after``; returns the lines."""
    moves = label_moves(before, after)
    if moves:
        artifacts.make_dirs(model_dir)
        with open(Path(model_dir) / LOG_NAME, "a", encoding="utf-8") as log:
            log.write("".join(json.dumps(move, sort_keys=True) + "\n" for move in moves))
    return moves


def label_moves(before: Mapping[str, int], after: Mapping[str, int]) -> list[dict[str, Any]]:
    """One audit record per label whose version changed, with the context's keys, the time and the process."""
    at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    context = _CONTEXT.get() or {}
    return [
        {**context, "at": at, "label": label, "from": before.get(label), "to": after.get(label),
         "pid": os.getpid(), "host": socket.gethostname()}
        for label in sorted({*before, *after})
        if before.get(label) != after.get(label)
    ]  # fmt: skip


def read_label_moves(model_dir: Path) -> list[dict[str, Any]]:
    """The model's label moves, oldest first (empty when none was recorded).

    A line that is not a JSON object (a write cut short by a crash) is skipped with a warning.
    """
    path = Path(model_dir) / LOG_NAME
    if not path.is_file():
        return []
    moves = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            move = json.loads(line) if line.strip() else None
        except ValueError:
            move = line
        if isinstance(move, dict):
            moves.append(move)
        elif move is not None:
            log.warning("%s line %d is not a label move, skipped: %.200s", path, number, line)
    return moves


def move_details(move: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a move beyond :data:`MOVE_KEYS` (``run``, ``task``, ``reason``, ...), sorted by name."""
    return {key: move[key] for key in sorted(move) if key not in MOVE_KEYS}


def describe_move(move: Mapping[str, Any]) -> str:
    """One move as a line of text: when, label, from -> to, which process, and any other keys."""
    versions = " -> ".join("none" if move.get(k) is None else f"v{move[k]}" for k in ("from", "to"))
    where = f"pid {move.get('pid', '?')} on {move.get('host', '?')}"
    extra = "".join(f"  {key}={value}" for key, value in move_details(move).items())
    return f"{move.get('at', '?')}  {move.get('label', '?')}: {versions}  ({where}){extra}"
