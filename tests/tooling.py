"""What a test does when a tool or service it needs is missing.

On CI (``$CI`` set) a missing tool is a failure: ``.ci/run`` installs every
tool the tests use, so its absence means the CI setup broke.  Elsewhere (a
laptop without Docker, docker-compose or kubectl) the test skips and says how
to install what it needs.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail with it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so .ci/run should have provided it)", pytrace=False)
    pytest.skip(reason)


def require_executable(name: str, install_hint: str) -> str:
    """The path of executable ``name``; skips (fails under CI) with ``install_hint`` when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not on PATH; {install_hint}")
    return str(path)


@functools.cache
def _kustomize(folder: str) -> str:
    kubectl = require_executable("kubectl", "the manifest tests render include/k8s with `kubectl kustomize`")
    result = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return result.stdout


def kustomize(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders from ``folder`` (rendered once per session)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(os.fspath(folder))) if doc]
