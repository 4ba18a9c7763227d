"""Shared by the tests of the Terraform module (include/terraform): its paths, the terraform binary, the
parsed files (python-hcl2) and the module's own evaluation of include/k8s through `terraform console`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "include" / "terraform"
K8S = ROOT / "include" / "k8s"
HELM_VALUES = K8S / "helm" / "values.yaml"
EXAMPLE = MODULE / "examples" / "kind"


def terraform_binary() -> str:
    path = shutil.which("terraform") or (
        "/usr/local/bin/terraform" if Path("/usr/local/bin/terraform").exists() else None
    )
    if path is None:
        # Debian has no terraform package and PyPI only wrappers that download it at run time (no network
        # here), so .ci/run cannot install it: CI skips as well.  The project's machines ship the binary.
        pytest.skip("terraform is not installed (https://developer.hashicorp.com/terraform/install)")
    return path


def terraform_env(tmp: Path) -> dict[str, str]:
    config = tmp / "terraformrc"
    config.touch()
    # An empty CLI config silences the missing ~/.terraformrc warning; no checkpoint call (no network here).
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(config), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals and labels; strip them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def tf_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.tf"))


def parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle)


def expressions(node: Any) -> str:
    """Everything python-hcl2 kept of a parsed file (expressions and literals, no comments) as one text."""
    if isinstance(node, dict):
        return "\n".join(f"{key}\n{expressions(value)}" for key, value in node.items() if key != "__comments__")
    if isinstance(node, list):
        return "\n".join(expressions(item) for item in node)
    return str(node)


def blocks(parsed: dict[str, Any], kind: str) -> dict[str, Any]:
    """Labelled blocks of one kind (variable, output, ...) by unquoted label."""
    return {unquote(name): body for block in parsed.get(kind, []) for name, body in block.items()}


def resources(parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{unquote(rtype)}.{unquote(name)}": body
        for block in parsed.get("resource", [])
        for rtype, named in block.items()
        for name, body in named.items()
    }


def evaluate(
    tmp: Path, expression: str, inputs: dict[str, Any], files: tuple[str, ...] = ("variables.tf", "locals.tf")
) -> tuple[Any, str]:
    """The value of ``expression`` over the module's ``files`` with ``inputs``, and terraform's stderr.

    Only those files are copied (they need no provider, so no `terraform init`); ../k8s is a link to the
    real include/k8s, so path.module resolves exactly as in the module.
    """
    workdir = tmp / "terraform"
    workdir.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(MODULE / name, workdir / name)
    if not (tmp / "k8s").exists():
        (tmp / "k8s").symlink_to(K8S)
    (workdir / "terraform.tfvars.json").write_text(json.dumps(inputs))
    result = subprocess.run(
        [terraform_binary(), "console", "-no-color"],
        input=f"jsonencode({expression})\n",
        cwd=workdir,
        env=terraform_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The value is the last line (a failed validation prints a warning before it, on stdout too).
    lines = result.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith('"'):
        return None, result.stderr
    # The console prints an HCL string literal: JSON escapes, plus $${ and %%{ for template sequences.
    text = json.loads(lines[-1]).replace("$${", "${").replace("%%{", "%{")
    return json.loads(text), result.stderr
