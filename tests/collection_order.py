"""The order ``make test`` hands modules to its pytest-xdist workers: the long ones first.

Modules that start a whole stack (Airflow, compose, containers) run for minutes each.  ``make test`` gives
each worker one module at a time (``--dist loadfile --no-loadscope-reorder``, in collection order), so these
go first and the many short modules fill in around them, instead of one long module running alone at the
end.  The order within a module is kept: some modules' tests build on the previous test's state.
"""

from __future__ import annotations

from typing import Protocol

LONG_MODULE_MARKERS = ("compose", "e2e", "docker")


class _Item(Protocol):
    nodeid: str

    def get_closest_marker(self, name: str) -> object | None: ...


def rank(item: _Item) -> int:
    """0: starts a stack or containers; 1: slow; 2: the rest."""
    if any(item.get_closest_marker(marker) for marker in LONG_MODULE_MARKERS):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def long_modules_first(items: list[_Item]) -> None:
    """Sort ``items`` in place by their module's rank (its lowest test's), modules whole and in collection order."""
    ranks: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        module = _module(item)
        ranks[module] = min(ranks.get(module, 2), rank(item))
        first_seen.setdefault(module, index)
    items.sort(key=lambda item: (ranks[_module(item)], first_seen[_module(item)]))


def _module(item: _Item) -> str:
    return item.nodeid.split("::", 1)[0]
