"""The Terraform module in include/terraform, checked offline: format, parsing and structure.

No provider can be downloaded here, so `terraform fmt` and python-hcl2 check every file, structural checks
read the parsed files (variables and locals declared, providers pinned, the Helm release on the official
chart 1.22.0 with the project's values file, the kind example), and the variables' validation blocks are
exercised by the real `terraform console`.  test_terraform_manifests.py compares what the module applies
with `kubectl kustomize`.  `terraform init -backend=false && terraform validate` (marker ``terraform``) runs
where the providers can be installed: set MLOPS_TERRAFORM_PROVIDERS to a filesystem mirror folder, or to
``registry``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from terraform_module import (
    EXAMPLE,
    HELM_VALUES,
    K8S,
    MODULE,
    ROOT,
    blocks,
    evaluate,
    expressions,
    parse,
    resources,
    terraform_binary,
    terraform_env,
    tf_files,
    unquote,
)

CHART_VERSION = "1.22.0"
CHART_REPOSITORY = "https://airflow.apache.org"
REQUIRED_INPUTS: dict[str, Any] = {"artifact_share": {"nfs": {"server": "nfs.example.internal", "path": "/exports/x"}}}


@pytest.fixture(scope="module")
def module_files() -> dict[str, dict[str, Any]]:
    return {path.name: parse(path) for path in tf_files(MODULE)}


# --- terraform fmt and parsing ------------------------------------------------------------------------------


def test_terraform_fmt_reports_no_change(tmp_path: Path) -> None:
    result = subprocess.run(
        [terraform_binary(), "fmt", "-check", "-recursive", "-diff", str(MODULE.relative_to(ROOT))],
        cwd=ROOT,
        env=terraform_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"terraform fmt would change these files (run `terraform fmt -recursive include/terraform`):\n{result.stdout}{result.stderr}"
    )
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("path", sorted(MODULE.rglob("*.tf")), ids=lambda p: str(p.relative_to(MODULE)))
def test_every_tf_file_parses(path: Path) -> None:
    parsed = parse(path)
    assert set(parsed) - {"__comments__"}, f"{path} holds no Terraform block"


def test_terraform_and_providers_are_pinned(module_files: dict[str, dict[str, Any]]) -> None:
    settings = [block for parsed in module_files.values() for block in parsed.get("terraform", [])]
    assert len(settings) == 1, "the module should have exactly one terraform {} block (versions.tf)"
    assert unquote(settings[0]["required_version"]) == ">= 1.9"
    providers = {
        name: spec
        for block in settings[0]["required_providers"]
        for name, spec in block.items()
        if name != "__is_block__"
    }
    assert {name: unquote(spec["source"]) for name, spec in providers.items()} == {
        "kubernetes": "hashicorp/kubernetes",
        "helm": "hashicorp/helm",
    }
    for name, spec in providers.items():
        # "~> X.Y" allows minor upgrades only; an open ">=" would take the next breaking major release.
        assert re.fullmatch(r"~> \d+\.\d+", unquote(spec["version"])), (
            f"provider {name} is not pinned to a major version: {spec['version']}"
        )

    example = parse(EXAMPLE / "main.tf")["terraform"][0]
    example_providers = {
        name: spec for block in example["required_providers"] for name, spec in block.items() if name != "__is_block__"
    }
    for name, spec in providers.items():
        assert unquote(example_providers[name]["version"]) == unquote(spec["version"]), (
            f"examples/kind pins {name} differently from the module"
        )


def test_every_variable_used_is_declared_and_every_declared_variable_is_used(
    module_files: dict[str, dict[str, Any]],
) -> None:
    declared = {name for parsed in module_files.values() for name in blocks(parsed, "variable")}
    text = "\n".join(
        expressions({k: v for k, v in parsed.items() if k != "variable"}) for parsed in module_files.values()
    )
    # A validation block may only name its own variable; count those uses too (they are real uses).
    validations = "\n".join(
        expressions(body.get("validation", []))
        for parsed in module_files.values()
        for body in blocks(parsed, "variable").values()
    )
    used = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", text))
    assert used - declared == set(), f"variables used but not declared: {sorted(used - declared)}"
    assert declared - used == set(), (
        f"variables declared but never used outside their validation: {sorted(declared - used)}"
    )
    assert set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", validations)) <= declared


def test_every_local_used_is_defined(module_files: dict[str, dict[str, Any]]) -> None:
    defined = {
        name
        for parsed in module_files.values()
        for block in parsed.get("locals", [])
        for name in block
        if name != "__comments__"
    }
    text = "\n".join(expressions(parsed) for parsed in module_files.values())
    used = set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_-]*)", text))
    assert used - defined == set(), f"locals used but not defined: {sorted(used - defined)}"


def test_every_variable_has_a_description_and_error_messages_say_what_to_do(
    module_files: dict[str, dict[str, Any]],
) -> None:
    for parsed in module_files.values():
        for name, body in blocks(parsed, "variable").items():
            assert unquote(body.get("description", "")).strip(), f"variable {name} has no description"
            assert "type" in body, f"variable {name} has no type"
            for validation in body.get("validation", []):
                assert len(unquote(validation["error_message"])) > 30, f"variable {name}: error message too terse"


def test_the_release_installs_the_official_chart_with_the_project_values(
    module_files: dict[str, dict[str, Any]],
) -> None:
    releases = {
        name: body
        for parsed in module_files.values()
        for name, body in resources(parsed).items()
        if name.startswith("helm_release.")
    }
    assert list(releases) == ["helm_release.airflow"]
    release = releases["helm_release.airflow"]
    assert release["repository"] == "${local.airflow_chart.repository}"
    assert release["chart"] == "${local.airflow_chart.name}"
    assert release["version"] == "${local.airflow_chart.version}"
    # The project's values file comes first; later documents and `set` override it.
    assert release["values"].startswith("${concat([file(local.helm_values_file)]"), release["values"]

    locals_block = module_files["locals.tf"]["locals"][0]
    chart = {key: unquote(value) for key, value in locals_block["airflow_chart"].items()}
    assert chart == {"repository": CHART_REPOSITORY, "name": "airflow", "version": CHART_VERSION}
    assert unquote(locals_block["k8s_dir"]) == "${path.module}/../k8s"
    assert unquote(locals_block["helm_values_file"]) == "${local.k8s_dir}/helm/values.yaml"
    assert HELM_VALUES.is_file(), f"{HELM_VALUES} is missing"
    # The values file records the chart version it was written for, in its header comment.
    header = "".join(line for line in HELM_VALUES.read_text().splitlines(keepends=True)[:10] if line.startswith("#"))
    assert re.search(rf"(?<![\d.]){re.escape(CHART_VERSION)}(?![\d.])", header), (
        f"{HELM_VALUES} header does not name chart {CHART_VERSION}"
    )

    # Every `set` path names a key the project's values already have: a misspelt path would add a key the
    # chart ignores (or its schema rejects) instead of replacing ours.
    values = yaml.safe_load(HELM_VALUES.read_text())
    set_names = [unquote(entry["name"]) for entry in release["set"]]
    assert set(set_names) == {
        "images.airflow.repository",
        "images.airflow.tag",
        "data.metadataSecretName",
        "fernetKeySecretName",
        "jwtSecretName",
        "apiSecretKeySecretName",
    }
    for name in set_names:
        node: Any = values
        for part in name.split("."):
            assert isinstance(node, dict) and part in node, f"`set` path {name} is not a key of {HELM_VALUES.name}"
            node = node[part]


def test_every_yaml_file_the_module_reads_exists(module_files: dict[str, dict[str, Any]]) -> None:
    files = [unquote(path) for path in module_files["locals.tf"]["locals"][0]["manifest_files"]]
    assert files, "local.manifest_files is empty"
    missing = [path for path in files if not (K8S / path).is_file()]
    assert not missing, (
        f"local.manifest_files in include/terraform/locals.tf names files that include/k8s does not have: {missing}"
    )
    assert not [path for path in files if Path(path).name == "kustomization.yaml"], (
        "kustomization.yaml files are not manifests"
    )
    assert len(set(files)) == len(files), "a file is listed twice"


BAD_INPUTS = [
    pytest.param({"image": {"repository": "reg.example/airflow", "tag": "latest"}}, 'not "latest"', id="latest-tag"),
    pytest.param(
        {"image": {"repository": "reg.example/airflow:1.0", "tag": "1.0"}},
        "without tag or digest",
        id="tag-in-repository",
    ),
    pytest.param(
        {"artifact_share": {"host_path": "/x", "nfs": {"server": "s", "path": "/p"}}}, "exactly one of", id="two-shares"
    ),
    pytest.param({"artifact_share": {}}, "exactly one of", id="no-share"),
    pytest.param({"artifact_share": None}, "set it there", id="share-mode-without-share"),
    pytest.param(
        {"artifact_share": None, "artifact_store": {"kind": "bucket", "uri": "s3://b/p"}},
        'must be "share"',
        id="bad-kind",
    ),
    pytest.param(
        {"artifact_share": None, "artifact_store": {"kind": "object_storage"}}, "s3://<bucket>/<prefix>", id="no-uri"
    ),
    pytest.param(
        {"artifact_share": None, "artifact_store": {"kind": "object_storage", "uri": "https://b.example/p"}},
        "s3://<bucket>/<prefix>",
        id="http-uri",
    ),
    pytest.param(
        {"artifact_share": None, "artifact_store": {"kind": "object_storage", "uri": "gs://acme-mlops/prod"}},
        "gs:// is not supported yet",
        id="gcs-uri",
    ),
    pytest.param(
        {"artifact_share": None, "artifact_store": {"kind": "object_storage", "uri": "s3:///prefix"}},
        "s3://<bucket>/<prefix>",
        id="uri-without-bucket",
    ),
    pytest.param(
        {"artifact_store": {"kind": "object_storage", "uri": "s3://acme-mlops/prod"}},
        "leave it null",
        id="bucket-and-share",
    ),
    pytest.param({"artifact_store": {"uri": "s3://acme-mlops/prod"}}, "apply to kind", id="uri-in-share-mode"),
    pytest.param(
        {"artifact_share": {"nfs": {"server": "s", "path": "exports"}}}, "absolute export path", id="relative-nfs-path"
    ),
    pytest.param({"artifact_share": {"host_path": "/x", "size": "100 GB"}}, "Kubernetes quantity", id="bad-size"),
    pytest.param({"namespaces": {"airflow": "same", "steps": "same"}}, "must differ", id="same-namespaces"),
    pytest.param({"namespaces": {"airflow": "MLOps"}}, "DNS-1123 label", id="bad-namespace"),
    pytest.param({"gpu_node_labels": {"pool": "a,b"}}, "label value", id="comma-in-label"),
    pytest.param({"gpu_node_labels": {"bad key!": "x"}}, "label key", id="bad-label-key"),
    pytest.param({"secret_names": {"fernet_key": "Fernet_Key"}}, "Secret name", id="bad-secret-name"),
    pytest.param({"model_server_image": "tensorflow/serving"}, "tag or a digest", id="unpinned-server-image"),
    pytest.param({"gpu_quota": 1.5}, "whole number", id="fractional-quota"),
    # Without a registry path the trainer images would be "./mlops-trainer:<tag>".
    pytest.param(
        {"image": {"repository": "mlops-trainer", "tag": "1"}}, "must include the registry path", id="no-registry-path"
    ),
    pytest.param({"cluster_domain": ""}, "cluster's DNS domain", id="empty-cluster-domain"),
    pytest.param({"cluster_domain": "Cluster Local"}, "cluster's DNS domain", id="bad-cluster-domain"),
    pytest.param({"helm_timeout_seconds": -1}, "greater than 0", id="negative-helm-timeout"),
    pytest.param({"helm_timeout_seconds": 0}, "greater than 0", id="zero-helm-timeout"),
    pytest.param({"image_pull_secret": "Corp_Registry"}, "Secret name", id="bad-pull-secret"),
    pytest.param({"service_monitor_labels": {"release": "a b"}}, "Kubernetes labels", id="bad-monitor-label"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_validation_rejects_a_bad_value_with_a_message(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    inputs = {**REQUIRED_INPUTS, "image": {"repository": "reg.example/airflow", "tag": "1.0"}, **overrides}
    _, stderr = evaluate(tmp_path, "var.namespaces", inputs, files=("variables.tf",))
    assert "Invalid value for variable" in stderr and message in " ".join(stderr.split()), stderr


def test_validation_accepts_good_values(tmp_path: Path) -> None:
    inputs = {
        "image": {"repository": "registry.example.com:5000/mlops/airflow-tf-lifecycle", "tag": "0.1.0"},
        "artifact_share": {"host_path": "/var/local/mlops-artifacts", "size": "5Gi"},
        "gpu_node_labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "model_server_image": "mirror.example/serving@sha256:" + "a" * 64,
        "gpu_quota": 8,
        "cluster_domain": "corp.example",
        "helm_timeout_seconds": 1800,
        "image_pull_secret": None,
        "service_monitor_labels": {"prometheus": "main", "example.com/team": "ml"},
    }
    value, stderr = evaluate(tmp_path, "var.namespaces", inputs, files=("variables.tf",))
    assert "Error" not in stderr, stderr
    assert value == {"airflow": "mlops", "steps": "mlops-steps"}


@pytest.mark.parametrize("uri", ["s3://acme-mlops/prod", "s3://acme.mlops", "s3://acme_mlops/a/b/"])
def test_validation_accepts_a_bucket(tmp_path: Path, uri: str) -> None:
    inputs = {
        "image": {"repository": "reg.example/airflow", "tag": "1.0"},
        "artifact_store": {"kind": "object_storage", "uri": uri},
    }
    value, stderr = evaluate(tmp_path, "var.artifact_store.uri", inputs, files=("variables.tf",))
    assert "Error" not in stderr, stderr
    assert value == uri


def test_the_kind_example_calls_the_module_with_declared_inputs(module_files: dict[str, dict[str, Any]]) -> None:
    example = parse(EXAMPLE / "main.tf")
    calls = blocks(example, "module")
    assert list(calls) == ["mlops"]
    call = calls["mlops"]
    assert (EXAMPLE / unquote(call["source"])).resolve() == MODULE
    variables = {name: body for parsed in module_files.values() for name, body in blocks(parsed, "variable").items()}
    arguments = set(call) - {"source", "__is_block__", "__comments__"}
    assert arguments <= variables.keys(), (
        f"examples/kind passes undeclared inputs: {sorted(arguments - variables.keys())}"
    )
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= arguments, f"examples/kind misses required inputs: {sorted(required - arguments)}"
    outputs = {name for parsed in module_files.values() for name in blocks(parsed, "output")}
    assert {"namespaces", "model_server_url"} <= outputs
    used_outputs = set(re.findall(r"module\.mlops\.([A-Za-z_]+)", expressions(example)))
    assert used_outputs <= outputs


# --- terraform init + validate (needs the providers) --------------------------------------------------------


@pytest.mark.terraform
def test_terraform_init_and_validate_the_kind_example(tmp_path: Path) -> None:
    source = os.environ.get("MLOPS_TERRAFORM_PROVIDERS")
    if not source:
        pytest.skip(
            "the hashicorp/kubernetes and hashicorp/helm providers cannot be downloaded here; set "
            "MLOPS_TERRAFORM_PROVIDERS=registry (with network) or to a `terraform providers mirror` folder"
        )
    env = terraform_env(tmp_path)
    if source != "registry":
        mirror = Path(source).resolve()
        assert mirror.is_dir(), f"MLOPS_TERRAFORM_PROVIDERS={source} is not a folder"
        Path(env["TF_CLI_CONFIG_FILE"]).write_text(
            f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'
        )
    # A copy, so that .terraform/ and the lock file never land in the checkout.
    shutil.copytree(MODULE, tmp_path / "include" / "terraform", ignore=shutil.ignore_patterns(".terraform*"))
    shutil.copytree(K8S, tmp_path / "include" / "k8s")
    workdir = tmp_path / "include" / "terraform" / "examples" / "kind"
    for command in (["init", "-backend=false", "-input=false", "-no-color"], ["validate", "-no-color"]):
        result = subprocess.run(
            [terraform_binary(), *command],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"terraform {command[0]} failed:\n{result.stdout}\n{result.stderr}"
