"""tests/collection_order.py: modules with a stack first, then slow ones, the rest last; no module split."""

from __future__ import annotations

from dataclasses import dataclass, field

from collection_order import long_modules_first


@dataclass
class Item:
    nodeid: str
    markers: tuple[str, ...] = field(default=())

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def test_stack_modules_go_first_then_slow_ones_and_each_module_keeps_its_order() -> None:
    items = [
        Item("tests/unit/test_a.py::test_1"),
        Item("tests/unit/test_slowish.py::test_1", ("slow",)),
        Item("tests/e2e/test_stack.py::test_1"),
        Item("tests/e2e/test_stack.py::test_2", ("slow", "e2e")),
        Item("tests/unit/test_a.py::test_2"),
        Item("tests/containers/test_docker.py::test_1", ("docker",)),
        Item("tests/e2e/test_stack.py::test_3"),
    ]
    long_modules_first(items)
    assert [item.nodeid for item in items] == [
        # One e2e test makes its whole module a stack module; its tests keep their order.
        "tests/e2e/test_stack.py::test_1",
        "tests/e2e/test_stack.py::test_2",
        "tests/e2e/test_stack.py::test_3",
        "tests/containers/test_docker.py::test_1",
        "tests/unit/test_slowish.py::test_1",
        "tests/unit/test_a.py::test_1",
        "tests/unit/test_a.py::test_2",
    ]
