"""The canary route's weights: ``<registry root>/<model>/route.json`` and the routes built from them.

On Kubernetes a Gateway API HTTPRoute sends a share of the requests addressed
to a model's ``stable`` label to a second TF Serving that answers with the
``canary`` label's version (``include/k8s/serving/canary``).  The local server
plays that part itself, with the share read from one small file per model::

    models/<name>/route.json    {"canary_weight": 25}    a whole percent, 0 to 100

:class:`include.mlops.deploy.traffic_split.LocalRoute` writes it.  The model
manager reads it on every poll of ``models.config`` (:class:`RouteWeights`): a
missing file is weight 0, and so is a malformed one, which is also logged as a
warning (once, until it changes).  The weight applies only while the model has
a ``canary`` label that resolves to a loaded version; :func:`canary_routes`
turns the weights into a :class:`CanaryRoute` per model that has one, when the
state is published, so that a request only looks one up.  How requests use it
is :mod:`include.mlops.serving.route`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from include.mlops.serving.loaders import LoadedVersion

log = logging.getLogger(__name__)

ROUTE_FILE = "route.json"
WEIGHT_KEY = "canary_weight"
# The labels the route splits between (the tracks its metrics are counted per).
STABLE = "stable"
CANARY = "canary"
TRACKS = (STABLE, CANARY)


def check_weight(percent: object) -> int:
    """``percent`` if it is a whole percent from 0 to 100 (an ``int``, not a bool), else ``ValueError``."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(
            f"the canary weight is a whole percent from 0 to 100 (an int), not {percent!r} ({type(percent).__name__})"
        )
    return percent


def read_weight(path: Path) -> int:
    """The weight in the route file at ``path``: 0 when there is none, ``ValueError`` when it is malformed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    try:
        payload: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(payload, dict) or WEIGHT_KEY not in payload:
        raise ValueError(f'{path} must be a JSON object like {{"{WEIGHT_KEY}": 25}}, not {text.strip()[:80]!r}')
    try:
        return check_weight(payload[WEIGHT_KEY])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class CanaryRoute:
    """A model's canary route: the version its ``canary`` label serves and the share of stable requests it gets."""

    canary: LoadedVersion
    weight: int  # percent
    share: float  # weight / 100, compared with random.random() per request


class _Model(Protocol):
    @property
    def versions(self) -> Mapping[int, LoadedVersion]: ...

    @property
    def labels(self) -> Mapping[str, int]: ...


def canary_routes(models: Mapping[str, _Model], weights: Mapping[str, int]) -> dict[str, CanaryRoute]:
    """The routes that apply: models with a weight above 0 and a ``canary`` label on a loaded version."""
    routes: dict[str, CanaryRoute] = {}
    for name, model in models.items():
        weight = weights.get(name, 0)
        version = model.labels.get(CANARY)
        canary = model.versions.get(version) if version is not None else None
        if weight > 0 and canary is not None:
            routes[name] = CanaryRoute(canary, weight, weight / 100)
    return routes


def applied_weights(models: Iterable[str], routes: Mapping[str, CanaryRoute]) -> dict[str, int]:
    """The weight each served model's route applies now (0 without a route), for ``mlops_canary_weight``."""
    return {name: routes[name].weight if name in routes else 0 for name in models}


class RouteWeights:
    """Reads the served models' route files; a malformed (or unreadable) one counts as 0 and is logged once."""

    def __init__(self, model_dir: Callable[[str], Path]) -> None:
        self._model_dir = model_dir
        self._problems: dict[str, str] = {}  # model -> the problem last logged for its file
        self.weights: dict[str, int] = {}  # as last read by routes()

    def read(self, names: Iterable[str]) -> dict[str, int]:
        return {name: self._read_one(name) for name in names}

    def changed(self, names: Iterable[str]) -> bool:
        """Whether the files now say something else than when :meth:`routes` last read them."""
        return self.read(names) != self.weights

    def routes(self, models: Mapping[str, _Model]) -> dict[str, CanaryRoute]:
        """Read the weights of ``models`` and build their routes (see :func:`canary_routes`)."""
        self.weights = self.read(models)
        return canary_routes(models, self.weights)

    def _read_one(self, name: str) -> int:
        try:
            weight = read_weight(self._model_dir(name) / ROUTE_FILE)
        except Exception as exc:  # whatever is wrong with the file, the poll goes on with weight 0
            problem = str(exc)
            if self._problems.get(name) != problem:
                log.warning("%s: canary route ignored (weight 0): %s", name, problem)
                self._problems[name] = problem
            return 0
        if self._problems.pop(name, None) is not None:
            log.info("%s: the canary route file is readable again (weight %d)", name, weight)
        return weight
