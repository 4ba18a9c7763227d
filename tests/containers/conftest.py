"""Fixtures for the container tests: a Docker engine, the trainer image, a shared artifact root.

On CI (``$CI`` set) a missing engine or image is a failure, not a skip:
``.ci/run`` installs Docker and builds the image, so their absence means the
CI setup broke.  On a laptop without Docker the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BUILD_HINT = (
    "build it with include/docker/base/build.sh and `DOCKER_BUILDKIT=1 /usr/bin/docker build "
    "-f include/docker/trainer/Dockerfile -t mlops-trainer:local .` (see docs/backends.md)"
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so .ci/run should have provided it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        _unavailable(f"no Docker engine reachable ({exc})")
    return client


@pytest.fixture(scope="session")
def trainer_image(docker_client: Any) -> str:
    from docker.errors import ImageNotFound

    from mlops_airflow.container_steps import trainer_image as configured_image

    image = configured_image()
    try:
        docker_client.images.get(image)
    except ImageNotFound:
        _unavailable(f"trainer image {image!r} is not built; {BUILD_HINT}")
    return image


@pytest.fixture
def shared_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh artifact root, mounted into the containers at the same path."""
    root = Path(tempfile.mkdtemp(prefix="mlops-containers-"))
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)
