"""The ``deploy`` block of a model config: how a version is checked before any label moves to it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Strict
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, PositiveFloat


@dataclass(frozen=True, config=STRICT)
class DeployConfig:
    """Infra validation, as TFX's InfraValidator does it, before a deploy moves any label.

    ``infra_validation``: load the version alone in a sandbox model server (the
    project's server in its ``tfserving`` behaviour, on a spare loopback port,
    reading the registry's files as TF Serving would) and query it with the
    version's own held-out rows; a version that does not load, or answers other
    than it does offline, is never labelled.  ``infra_validation_timeout_s``:
    how long the sandbox may take to start and report the version AVAILABLE.
    """

    infra_validation: Annotated[bool, Strict()] = True
    infra_validation_timeout_s: PositiveFloat = 120.0
