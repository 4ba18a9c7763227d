"""What the Terraform module applies from include/k8s, evaluated by the real terraform and compared with
`kubectl kustomize`.

locals.tf decodes the manifests with built-in functions only, so `terraform console` evaluates it offline in a
copy that holds just variables.tf and locals.tf (terraform_module.evaluate).  The objects it would apply are
compared, object by object, with what kustomize renders from the same files: the two install paths (Helm +
kustomize, or Terraform) cannot drift apart.  Renamed namespaces, the release's env, images and Secret names
are checked against the variables.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from terraform_module import HELM_VALUES, K8S, MODULE, blocks, evaluate, parse, unquote
from tooling import require_executable

# The kustomizations whose objects the module applies (the overlays' work is done by variables instead).
KUSTOMIZATIONS = (K8S / "base", K8S / "serving", K8S / "serving" / "monitoring")
# Kinds the module creates as typed resources from variables, not from the YAML.
TYPED_KINDS = {"Namespace", "PersistentVolume", "PersistentVolumeClaim"}
MANAGED_BY = "app.kubernetes.io/managed-by"
# The image is the one the base kustomization names, so that images compare equal with kustomize's
# rendering; the ServiceMonitor is on so that it is compared too.
REQUIRED_INPUTS: dict[str, Any] = {"artifact_share": {"nfs": {"server": "nfs.example.internal", "path": "/exports/x"}}}


def _evaluate_ok(tmp: Path, expression: str, inputs: dict[str, Any]) -> Any:
    value, stderr = evaluate(tmp, expression, inputs)
    assert "Error" not in stderr and value is not None, f"terraform could not evaluate {expression}:\n{stderr}"
    return value


def _base_image() -> dict[str, str]:
    """The Airflow image as the base kustomization names it."""
    entries = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text()).get("images", [])
    airflow = next(entry for entry in entries if entry["name"] == "mlops-airflow")
    return {"repository": airflow["newName"], "tag": str(airflow["newTag"])}


def _inputs(**overrides: Any) -> dict[str, Any]:
    return {**REQUIRED_INPUTS, "image": _base_image(), "install_service_monitor": True, **overrides}


EVERYTHING = "{objects = local.applied_objects, after = keys(local.objects_after_release), before = keys(local.objects_before_release), namespace_labels = local.namespace_labels, env = local.release_env, url = local.model_server_url, volumes = local.artifact_volumes, pvc = local.artifact_pvc_name}"


@pytest.fixture(scope="module")
def default_evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _evaluate_ok(tmp_path_factory.mktemp("tf"), EVERYTHING, _inputs())


@pytest.fixture(scope="module")
def renamed_evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    inputs = _inputs(
        namespaces={"airflow": "af", "steps": "st"},
        gpu_node_labels={"nvidia.com/gpu.present": "true", "pool": "a100"},
        secret_names={"metadata_db": "prod-metadata"},
        model_server_image="mirror.example/serving:1.0",
        image={"repository": "reg.example/team/airflow-tf-lifecycle", "tag": "2.10"},
    )
    return _evaluate_ok(tmp_path_factory.mktemp("tf"), EVERYTHING, inputs)


@pytest.fixture(scope="module")
def kustomize_objects() -> list[dict[str, Any]]:
    kubectl = require_executable("kubectl", "install the Kubernetes client (it bundles kustomize).")
    objects: list[dict[str, Any]] = []
    for folder in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
        objects += [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    return objects


def _key(obj: dict[str, Any]) -> str:
    return "/".join(
        part for part in (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) if part
    )


def _without_terraform_label(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["labels"].pop(MANAGED_BY)
    return obj


def test_the_module_applies_exactly_what_kustomize_renders(
    default_evaluation: dict[str, Any], kustomize_objects: list[dict[str, Any]]
) -> None:
    """Same objects, same namespaces, same specs and images: the two install paths cannot drift apart."""
    rendered = {_key(obj): obj for obj in kustomize_objects if obj["kind"] not in TYPED_KINDS}
    applied = {_key(obj): obj for obj in default_evaluation["objects"]}
    assert sorted(applied) == sorted(rendered), (
        "the objects the module applies differ from `kubectl kustomize` of include/k8s/base and serving; "
        "update local.manifest_files in include/terraform/locals.tf.\n"
        f"only in kustomize: {sorted(rendered.keys() - applied.keys())}\nonly in terraform: {sorted(applied.keys() - rendered.keys())}"
    )
    for key, obj in applied.items():
        assert obj["metadata"]["labels"][MANAGED_BY] == "terraform", key
        assert _without_terraform_label(obj) == rendered[key], f"{key} differs between the module and kustomize"
    assert sorted(default_evaluation["after"]) == ["Job/mlops/mlops-create-deploy-pool"], (
        "only Airflow-side Jobs wait for the release"
    )


def test_the_namespaces_carry_the_labels_of_the_manifests(
    default_evaluation: dict[str, Any], kustomize_objects: list[dict[str, Any]]
) -> None:
    namespaces = {
        obj["metadata"]["name"]: obj["metadata"]["labels"] for obj in kustomize_objects if obj["kind"] == "Namespace"
    }
    # The variables' defaults are the manifests' namespaces, and each gets the manifests' labels.
    variables = blocks(parse(MODULE / "variables.tf"), "variable")
    defaults = re.findall(r'optional\(string, "([^"]+)"\)', variables["namespaces"]["type"])
    assert sorted(defaults) == sorted(namespaces), (
        f"namespace defaults {defaults} differ from the manifests' {sorted(namespaces)}"
    )
    labels = default_evaluation["namespace_labels"]
    for role, name in (("airflow", "mlops"), ("steps", "mlops-steps")):
        expected = {k: v for k, v in namespaces[name].items() if k.startswith("pod-security.kubernetes.io/")}
        assert {k: v for k, v in labels[role].items() if k.startswith("pod-security.kubernetes.io/")} == expected, role
        versions = [v for k, v in labels[role].items() if k.endswith("-version")]
        assert versions and all(v == "v1.33" for v in versions), (
            f"{role}: Pod Security versions must be pinned to v1.33"
        )
    assert labels["steps"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["airflow"]["pod-security.kubernetes.io/enforce"] == "baseline"


def test_storage_matches_the_manifests(
    default_evaluation: dict[str, Any], kustomize_objects: list[dict[str, Any]]
) -> None:
    volumes = {obj["metadata"]["name"]: obj for obj in kustomize_objects if obj["kind"] == "PersistentVolume"}
    claims = {obj["metadata"]["namespace"]: obj for obj in kustomize_objects if obj["kind"] == "PersistentVolumeClaim"}
    module_volumes = {v["pv_name"]: v["namespace"] for v in default_evaluation["volumes"].values()}
    assert module_volumes == {name: pv["spec"]["claimRef"]["namespace"] for name, pv in volumes.items()}
    assert {claim["metadata"]["name"] for claim in claims.values()} == {default_evaluation["pvc"]}
    variables = blocks(parse(MODULE / "variables.tf"), "variable")
    storage_class = unquote(variables["storage_class_name"]["default"])
    assert {obj["spec"]["storageClassName"] for obj in [*volumes.values(), *claims.values()]} == {storage_class}


def test_renamed_namespaces_reach_every_object(
    renamed_evaluation: dict[str, Any], default_evaluation: dict[str, Any]
) -> None:
    renames = {"mlops": "af", "mlops-steps": "st"}
    before = {
        (obj["kind"], obj["metadata"]["name"]): obj["metadata"].get("namespace")
        for obj in default_evaluation["objects"]
    }
    after = {
        (obj["kind"], obj["metadata"]["name"]): obj["metadata"].get("namespace")
        for obj in renamed_evaluation["objects"]
    }
    assert after == {key: renames.get(ns, ns) for key, ns in before.items()}
    subjects = [s for obj in renamed_evaluation["objects"] for s in obj.get("subjects", [])]
    assert subjects and {s["namespace"] for s in subjects if s["kind"] == "ServiceAccount"} == {"af"}
    assert renamed_evaluation["url"] == "http://mlops-model-server.st.svc.cluster.local:8501"
    assert {v["namespace"] for v in renamed_evaluation["volumes"].values()} == {"af", "st"}
    assert sorted(renamed_evaluation["after"]) == ["Job/af/mlops-create-deploy-pool"]


def _env(evaluation: dict[str, Any]) -> dict[str, str]:
    names = [entry["name"] for entry in evaluation["env"]]
    assert len(names) == len(set(names)), f"an env name appears twice in the release's env: {names}"
    return {entry["name"]: entry["value"] for entry in evaluation["env"]}


def test_the_release_env_carries_the_installation_and_keeps_the_rest(
    default_evaluation: dict[str, Any], renamed_evaluation: dict[str, Any]
) -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())
    values_env = {entry["name"]: entry["value"] for entry in values["env"]}
    overridden = {"MLOPS_K8S_NAMESPACE", "MLOPS_K8S_GPU_NODE_SELECTOR", "AIRFLOW_CONN_MODEL_SERVER_DEFAULT"}
    # The names must be the values file's own: otherwise both the old and the new entry reach the pods.
    assert overridden <= values_env.keys(), f"{HELM_VALUES.name} env lacks {sorted(overridden - values_env.keys())}"
    extra_env_names = set(re.findall(r"name:\s*(\S+)", values.get("extraEnv") or ""))
    assert not overridden & extra_env_names, "extraEnv would shadow the env entries the module sets"

    # With the defaults, the module changes nothing the values file says: the Helm-only install is the same.
    assert _env(default_evaluation) == values_env
    # The Connection is the URL with the server's config poll as its extra (the output is the URL alone).
    assert values_env["AIRFLOW_CONN_MODEL_SERVER_DEFAULT"].startswith(
        default_evaluation["url"] + "?config_poll_seconds="
    )

    renamed = _env(renamed_evaluation)
    assert renamed["MLOPS_K8S_NAMESPACE"] == "st"
    assert renamed["MLOPS_K8S_GPU_NODE_SELECTOR"] == "nvidia.com/gpu.present=true,pool=a100"
    assert renamed["AIRFLOW_CONN_MODEL_SERVER_DEFAULT"] == (
        "http://mlops-model-server.st.svc.cluster.local:8501?config_poll_seconds=30"
    )
    assert {k: v for k, v in renamed.items() if k not in overridden} == {
        k: v for k, v in values_env.items() if k not in overridden
    }


def _containers(evaluation: dict[str, Any], kind: str, name: str) -> list[dict[str, Any]]:
    obj = next(obj for obj in evaluation["objects"] if obj["kind"] == kind and obj["metadata"]["name"] == name)
    return obj["spec"]["template"]["spec"]["containers"]


def test_images_and_secret_names_follow_the_variables(
    renamed_evaluation: dict[str, Any], default_evaluation: dict[str, Any]
) -> None:
    pool = _containers(renamed_evaluation, "Job", "mlops-create-deploy-pool")[0]
    assert pool["image"] == "reg.example/team/airflow-tf-lifecycle:2.10"
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in pool["env"] if "valueFrom" in e]
    assert refs == ["prod-metadata"], "the pool Job must read the metadata DB Secret the release uses"
    # The trainer image is derived from the Airflow image as values.yaml's extraEnv derives it.
    assert (
        _containers(renamed_evaluation, "Job", "mlops-prepare-share")[0]["image"]
        == "reg.example/team/mlops-trainer:2.10"
    )
    # model_server_image replaces TF Serving's image only; the pod's request logger runs the trainer image.
    assert {c["name"]: c["image"] for c in _containers(renamed_evaluation, "Deployment", "mlops-model-server")} == {
        "server": "mirror.example/serving:1.0",
        "request-logger": "reg.example/team/mlops-trainer:2.10",
    }
    served = {c["image"] for c in _containers(default_evaluation, "Deployment", "mlops-model-server")}
    assert all(re.search(r":[\w.-]+$|@sha256:", image) for image in served), f"model server image not pinned: {served}"


# --- the object-storage mode ---------------------------------------------------------------------------------

BUCKET = "s3://acme-mlops/prod"
IDENTITY = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/mlops-artifacts"}


@pytest.fixture(scope="module")
def bucket_evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    inputs = {
        **_inputs(artifact_store={"kind": "object_storage", "uri": BUCKET, "service_account_annotations": IDENTITY}),
        "artifact_share": None,
    }
    return _evaluate_ok(
        tmp_path_factory.mktemp("tf"), EVERYTHING.replace("}", ", values = local.release_values}"), inputs
    )


def test_object_storage_creates_no_share_and_mounts_none(bucket_evaluation: dict[str, Any]) -> None:
    assert bucket_evaluation["volumes"] == {}
    keys = {_key(obj) for obj in bucket_evaluation["objects"]}
    # The share's Job and the share-mode model server are not applied (serving/overlays/object-storage is).
    assert "Job/mlops-steps/mlops-prepare-share" not in keys
    assert "Deployment/mlops-steps/mlops-model-server" not in keys
    assert "Service/mlops-steps/mlops-model-server" in keys and bucket_evaluation["url"]
    for obj in bucket_evaluation["objects"]:
        if "template" in obj.get("spec", {}):
            claims = [v for v in obj["spec"]["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
            assert claims == [], _key(obj)


def test_object_storage_gives_every_service_account_the_identity(
    bucket_evaluation: dict[str, Any], default_evaluation: dict[str, Any]
) -> None:
    accounts = [obj for obj in bucket_evaluation["objects"] if obj["kind"] == "ServiceAccount"]
    assert len(accounts) == 4
    for account in accounts:
        assert account["metadata"]["annotations"] == IDENTITY, _key(account)
        assert account["imagePullSecrets"] == [{"name": "mlops-registry"}], _key(account)
    assert not [
        o for o in default_evaluation["objects"] if o["kind"] == "ServiceAccount" and "annotations" in o["metadata"]
    ]


def test_object_storage_release_logs_to_the_bucket(bucket_evaluation: dict[str, Any]) -> None:
    values = bucket_evaluation["values"]
    env = _env(bucket_evaluation)
    assert env["MLOPS_ARTIFACT_ROOT"] == BUCKET
    assert not {"MLOPS_K8S_ARTIFACT_PVC", "MLOPS_K8S_ARTIFACT_ROOT"} & env.keys()
    assert values["config"]["logging"] == {
        "remote_logging": "True",
        "remote_base_log_folder": f"{BUCKET}/logs",
        "remote_log_conn_id": "aws_default",
    }
    assert values["logs"] == {"persistence": {"enabled": False}}
    assert values["workers"] == {"extraVolumes": [], "extraVolumeMounts": []}
    for component in ("apiServer", "dagProcessor"):
        assert values[component]["serviceAccount"]["annotations"] == IDENTITY
    assert yaml.safe_load(values["extraEnvFrom"]) == [{"secretRef": {"name": "mlops-object-store", "optional": True}}]


def test_object_storage_release_matches_the_documented_values_file(bucket_evaluation: dict[str, Any]) -> None:
    """The module's object-storage values and include/k8s/helm/values-object-storage.yaml set the same keys."""
    documented = yaml.safe_load((HELM_VALUES.parent / "values-object-storage.yaml").read_text())
    values = bucket_evaluation["values"]
    assert set(documented) <= set(values), sorted(set(documented) - set(values))
    assert values["extraEnvFrom"] == documented["extraEnvFrom"]
    assert values["config"]["logging"]["remote_log_conn_id"] == documented["config"]["logging"]["remote_log_conn_id"]
    documented_env = {e["name"] for e in documented["env"]} - {"AWS_REGION"}
    assert documented_env == set(_env(bucket_evaluation))
