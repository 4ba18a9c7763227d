"""The audit log of label moves: one JSON line per change, ``models/<name>/label-moves.jsonl``.

Every edit of a model's labels through the registry (a deploy, its roll back,
a repair, ``set_label`` by hand) appends what changed, when, and from which
process, so that "which version served as stable at 03:00, and who moved it"
has an answer.  TF Serving ignores the file: only numeric folders are versions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts

LOG_NAME = "label-moves.jsonl"


def record_label_moves(model_dir: Path, before: Mapping[str, int], after: Mapping[str, int]) -> list[dict[str, Any]]:
    """Append one line per label whose version changed between ``before`` and ``after``; returns the lines."""
    at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    moves = [
        {"at": at, "label": label, "from": before.get(label), "to": after.get(label),
         "pid": os.getpid(), "host": socket.gethostname()}
        for label in sorted({*before, *after})
        if before.get(label) != after.get(label)
    ]  # fmt: skip
    if moves:
        artifacts.make_dirs(model_dir)
        with open(Path(model_dir) / LOG_NAME, "a", encoding="utf-8") as log:
            log.write("".join(json.dumps(move, sort_keys=True) + "\n" for move in moves))
    return moves


def read_label_moves(model_dir: Path) -> list[dict[str, Any]]:
    """The model's label moves, oldest first (empty when none was recorded)."""
    path = Path(model_dir) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
