"""The object-storage install, offline: no ReadWriteMany volume anywhere, every process on the bucket.

Renders include/k8s/overlays/object-storage and include/k8s/serving/overlays/object-storage with
``kubectl kustomize`` (each object validated against the Kubernetes 1.33 schema, each pod against the Pod
Security levels of its namespace) and layers helm/values-object-storage.yaml on helm/values.yaml as Helm
does (maps merged, lists replaced).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tooling import kustomize

from tools.pod_security import has_pod_spec, violations

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "include" / "k8s"
K8S_VERSION = "1.33"
SHARE = "/mnt/mlops-artifacts"
SHARE_CLAIM = "mlops-artifacts"
BASE_OVERLAY = "overlays/object-storage"
SERVING_OVERLAY = "serving/overlays/object-storage"
VALUES = K8S_DIR / "helm" / "values.yaml"
OBJECT_VALUES = K8S_DIR / "helm" / "values-object-storage.yaml"
IDENTITY_ANNOTATIONS = {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"}
# The env entries the object-storage values change; every other entry of values.yaml's env stays as it is.
MODE_ENV = {"MLOPS_K8S_ARTIFACT_PVC", "MLOPS_K8S_ARTIFACT_ROOT", "MLOPS_ARTIFACT_ROOT", "AWS_REGION"}
Obj = dict[str, Any]


def render(path: str) -> list[Obj]:
    return kustomize(K8S_DIR / path)


def pod_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def all_containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def share_uses(objects: list[Obj]) -> list[str]:
    """Every PV/PVC, every pod volume on the share's claim, every mount at the share's path."""
    found = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects
        if o["kind"] in {"PersistentVolume", "PersistentVolumeClaim"}
    ]
    for obj in filter(has_pod_spec, objects):
        spec = pod_spec(obj)
        found += [
            f"{obj['metadata']['name']}: volume {v['name']}"
            for v in spec.get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == SHARE_CLAIM
        ]
        found += [
            f"{obj['metadata']['name']}/{c['name']}: mount {m['mountPath']}"
            for c in all_containers(spec)
            for m in c.get("volumeMounts", [])
            if m["mountPath"] == SHARE
        ]
    return found


def namespace_levels() -> dict[str, set[str]]:
    levels: dict[str, set[str]] = {}
    for ns in (o for o in render(BASE_OVERLAY) if o["kind"] == "Namespace"):
        labels = ns["metadata"]["labels"]
        levels[ns["metadata"]["name"]] = {
            labels[f"pod-security.kubernetes.io/{m}"] for m in ("enforce", "warn", "audit")
        }
    return levels


@pytest.mark.parametrize("path", [BASE_OVERLAY, SERVING_OVERLAY])
def test_renders_valid_admitted_objects_without_the_share(path: str) -> None:
    objects = render(path)
    levels = namespace_levels()
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if has_pod_spec(obj):
            for level in levels[obj["metadata"]["namespace"]]:
                assert violations(obj, level) == [], f"{path}: {obj['kind']}/{obj['metadata']['name']} ({level})"
    assert share_uses(objects) == []


def test_the_share_check_finds_the_share_in_the_default_install() -> None:
    # The check above must be able to fail: the share mode's renderings are full of the share.
    assert share_uses(render("overlays/production"))
    assert share_uses(render("serving"))


def test_the_base_variant_keeps_everything_but_the_share() -> None:
    objects = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in render(BASE_OVERLAY)}
    share_mode = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in render("base")}
    dropped = {key for key in share_mode - objects}
    assert dropped == {
        ("PersistentVolume", None, "mlops-artifacts-airflow"),
        ("PersistentVolume", None, "mlops-artifacts-steps"),
        ("PersistentVolumeClaim", "mlops", SHARE_CLAIM),
        ("PersistentVolumeClaim", "mlops-steps", SHARE_CLAIM),
        ("Job", "mlops-steps", "mlops-prepare-share"),
    }
    assert objects - share_mode == {("NetworkPolicy", "mlops-steps", "object-store-egress")}


def test_every_service_account_carries_the_cloud_identity_and_the_pull_secret() -> None:
    accounts = [o for o in render(BASE_OVERLAY) if o["kind"] == "ServiceAccount"]
    assert len(accounts) == 4
    for account in accounts:
        assert set(account["metadata"].get("annotations", {})) == IDENTITY_ANNOTATIONS, account["metadata"]["name"]
        assert account["imagePullSecrets"] == [{"name": "mlops-registry"}], account["metadata"]["name"]


def test_step_pods_and_the_model_server_may_reach_the_store() -> None:
    (policy,) = [
        o
        for o in render(BASE_OVERLAY)
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "object-store-egress"
    ]
    (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/name" and expression["operator"] == "In"
    assert set(expression["values"]) == {"mlops-step", "mlops-model-server"}
    https = [
        rule
        for rule in policy["spec"]["egress"]
        if {"protocol": "TCP", "port": 443} in rule["ports"] and {"ipBlock": {"cidr": "0.0.0.0/0"}} in rule["to"]
    ]
    assert https, "no egress to the object store's HTTPS endpoint"
    dns_ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53)} <= dns_ports


# --------------------------------------------------------------------------- the model server


def model_server() -> tuple[Obj, dict[str, Obj], str]:
    objects = render(SERVING_OVERLAY)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (store,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlops-artifact-store"]
    containers = {c["name"]: c for c in all_containers(pod_spec(deployment))}
    return deployment, containers, store["data"]["MLOPS_ARTIFACT_ROOT"]


def resolved_env(container: Obj, store_root: str) -> dict[str, str]:
    """The container's env with configMapKeyRefs to mlops-artifact-store resolved."""
    env = {}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref is not None:
            assert ref == {"name": "mlops-artifact-store", "key": "MLOPS_ARTIFACT_ROOT"}, entry
            env[entry["name"]] = store_root
        else:
            env[entry["name"]] = entry["value"]
    return env


def test_every_container_that_reads_or_writes_the_registry_gets_the_bucket() -> None:
    deployment, containers, root = model_server()
    assert root.startswith("s3://") and root.split("://", 1)[1].split("/")[0]
    assert set(containers) == {"registry-mirror-init", "server", "request-logger", "registry-mirror"}
    for name in ("registry-mirror-init", "registry-mirror", "request-logger"):
        container = containers[name]
        assert resolved_env(container, root)["MLOPS_ARTIFACT_ROOT"] == root, name
        # The fallback credentials, optional: a pod with a cloud identity starts without the Secret.
        assert {"secretRef": {"name": "mlops-object-store", "optional": True}} in container["envFrom"], name
    assert pod_spec(deployment)["serviceAccountName"] == "mlops-model-server"
    assert pod_spec(deployment)["imagePullSecrets"] == [{"name": "mlops-registry"}]


def test_tf_serving_reads_the_mirror_copy_that_the_mirror_fills_first() -> None:
    deployment, containers, _root = model_server()
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    server = containers["server"]
    assert pod_spec(deployment)["containers"][0]["name"] == "server"  # overlays and Terraform patch index 0
    args = dict(arg.removeprefix("--").split("=", 1) for arg in server["args"])
    config_dir = args["model_config_file"].rsplit("/", 1)[0]
    assert args["model_config_file"] == "/models/models.config"
    assert args["prefer_tflite_model"] == "true" and int(args["model_config_file_poll_wait_seconds"]) > 0
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == config_dir]
    assert mount["readOnly"] is True and "emptyDir" in volumes[mount["name"]]
    (init,) = pod_spec(deployment)["initContainers"]
    for mirror, once in ((init, True), (containers["registry-mirror"], False)):
        assert mirror["image"] == "registry.example.com/mlops-server:0.1.0"
        assert mirror["command"] == ["python", "-m", "include.mlops.registry.mirror"]
        argv = mirror["args"]
        flags = {argv[i]: argv[i + 1] for i in range(0, len(argv) - 1, 2) if argv[i] != "--once"}
        # $(MLOPS_ARTIFACT_ROOT) is expanded by the kubelet from the container's own env.
        assert flags["--source"] == "$(MLOPS_ARTIFACT_ROOT)/models"
        assert "MLOPS_ARTIFACT_ROOT" in {e["name"] for e in mirror["env"]}
        assert flags["--dest"] == config_dir and float(flags["--interval-s"]) > 0
        assert ("--once" in argv) is once
        (dest,) = [m for m in mirror["volumeMounts"] if m["mountPath"] == config_dir]
        assert dest["name"] == mount["name"] and not dest.get("readOnly", False)
        assert mirror["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_request_logger_spools_locally_and_writes_to_the_bucket() -> None:
    from include.mlops.serving.request_logger import build_parser

    deployment, containers, root = model_server()
    logger = containers["request-logger"]
    # No --predlog-root: its default, the artifact root, is the bucket.
    assert build_parser().parse_args(logger["args"]).predlog_root is None
    env = resolved_env(logger, root)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in logger["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[env["MLOPS_STAGING_DIR"]]]


def test_the_mirror_image_is_the_project_server_image() -> None:
    def entries(folder: str) -> dict[str, Obj]:
        return {e["name"]: e for e in yaml.safe_load((K8S_DIR / folder / "kustomization.yaml").read_text())["images"]}

    assert entries(SERVING_OVERLAY)["mlops-server"] == entries("serving/overlays/project-server")["mlops-server"]


# --------------------------------------------------------------------------- Helm values


def helm_merge(base: Any, override: Any) -> Any:
    """Helm's layering of values files: maps merge key by key, anything else (lists too) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = helm_merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def layered() -> dict[str, Any]:
    return helm_merge(yaml.safe_load(VALUES.read_text()), yaml.safe_load(OBJECT_VALUES.read_text()))


def test_task_logs_go_to_the_bucket_under_the_artifact_root() -> None:
    values = layered()
    env = {e["name"]: e["value"] for e in values["env"]}
    root = env["MLOPS_ARTIFACT_ROOT"]
    logging = values["config"]["logging"]
    assert values["logs"]["persistence"]["enabled"] is False
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"] == f"{root}/logs"
    assert root.startswith("s3://")
    assert logging["remote_log_conn_id"] == "aws_default"


def test_no_airflow_pod_mounts_the_share_and_the_env_names_the_bucket() -> None:
    values, share_values = layered(), yaml.safe_load(VALUES.read_text())
    assert values["workers"]["extraVolumes"] == [] and values["workers"]["extraVolumeMounts"] == []
    env = {e["name"]: e["value"] for e in values["env"]}
    share_env = {e["name"]: e["value"] for e in share_values["env"]}
    assert env["MLOPS_ARTIFACT_ROOT"].startswith("s3://")
    assert not {"MLOPS_K8S_ARTIFACT_PVC", "MLOPS_K8S_ARTIFACT_ROOT"} & env.keys()
    assert not [name for name, value in env.items() if SHARE in value]
    # Helm replaces the env list as a whole: every other entry must stay values.yaml's.
    assert {k: v for k, v in env.items() if k not in MODE_ENV} == {
        k: v for k, v in share_env.items() if k not in MODE_ENV
    }
    # The templated part (trainer images, pull Secret) is values.yaml's, untouched.
    assert values["extraEnv"] == share_values["extraEnv"]
    assert "secretRef" in values["extraEnvFrom"] and "mlops-object-store" in values["extraEnvFrom"]
    assert "optional: true" in values["extraEnvFrom"]


def test_the_chart_created_service_accounts_carry_the_cloud_identity() -> None:
    values = layered()
    for component in ("apiServer", "dagProcessor"):
        account = values[component].get("serviceAccount", {})
        assert account.get("create", True) is not False, component
        assert set(account["annotations"]) == IDENTITY_ANNOTATIONS, component
    # The others run as ServiceAccounts of include/k8s, annotated by the kustomize overlay.
    accounts = {o["metadata"]["name"] for o in render(BASE_OVERLAY) if o["kind"] == "ServiceAccount"}
    for component in ("scheduler", "triggerer", "workers"):
        account = values[component]["serviceAccount"]
        assert account["create"] is False and account["name"] in accounts, component
