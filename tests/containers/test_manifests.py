"""include/k8s, offline: every kustomization renders, validates, and says what the production contract says.

No cluster here, so each rendered object is validated against the Kubernetes 1.33 OpenAPI schema
(kubernetes-validate, strict) and every pod-bearing object against the Pod Security level its namespace
enforces, warns and audits (tools.pod_security).  RBAC, NetworkPolicies, storage and the
model server are checked field by field, and the two shell Jobs run their real scripts/commands here.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tooling import kustomize

from include.mlops.artifacts import registry_root
from include.mlops.registry.filesystem import CONFIG_FILE, Registry
from tools.pod_security import has_pod_spec, violations

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "include" / "k8s"
K8S_VERSION = "1.33"
SHARE = Path("/mnt/mlops-artifacts")
MODELS_CONFIG = str(registry_root(SHARE) / CONFIG_FILE)
CLUSTER_OVERLAYS = ["overlays/kind", "overlays/production"]
KUSTOMIZATIONS = [
    "base",
    *CLUSTER_OVERLAYS,
    # Without the share: tests/containers/test_object_storage_manifests.py checks them further.
    "overlays/object-storage",
    "serving",
    "serving/base",
    "serving/overlays/project-server",
    "serving/overlays/object-storage",
    "serving/monitoring",
    "serving/canary",
    "serving/canary/track",
]
SERVERS = ["serving", "serving/overlays/project-server", "serving/canary"]
# Not in the core schema: the ServiceMonitor is checked against its CRD in test_cluster_install.py, the HTTPRoute
# against its CRD in test_canary_manifests.py.
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume"}

Obj = dict[str, Any]


def render(path: str) -> list[Obj]:
    return kustomize(K8S_DIR / path)


def one(objects: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def test_every_kustomization_is_covered() -> None:
    on_disk = {str(p.parent.relative_to(K8S_DIR)) for p in K8S_DIR.rglob("kustomization.yaml")}
    assert on_disk == set(KUSTOMIZATIONS)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renders_and_every_object_validates_strictly(path: str) -> None:
    objects = render(path)
    assert objects
    for obj in objects:
        where = f"{path}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], where
        else:
            assert obj["metadata"].get("namespace") in {"mlops", "mlops-steps"}, where
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mlops", where
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def namespace_levels() -> dict[str, set[str]]:
    """Every Pod Security level each namespace enforces, warns or audits (from the rendered base)."""
    levels: dict[str, set[str]] = {}
    for ns in (o for o in render("base") if o["kind"] == "Namespace"):
        labels = ns["metadata"]["labels"]
        levels[ns["metadata"]["name"]] = {
            labels[f"pod-security.kubernetes.io/{mode}"] for mode in ("enforce", "warn", "audit")
        }
    return levels


def test_namespaces_pin_their_pod_security_levels() -> None:
    expected = {
        "mlops": {"enforce": "baseline", "warn": "restricted", "audit": "restricted"},
        "mlops-steps": {"enforce": "restricted", "warn": "restricted", "audit": "restricted"},
    }
    namespaces = {o["metadata"]["name"]: o for o in render("base") if o["kind"] == "Namespace"}
    assert set(namespaces) == set(expected)
    for name, modes in expected.items():
        labels = {k: v for k, v in namespaces[name]["metadata"]["labels"].items() if k.startswith("pod-security")}
        want = {f"pod-security.kubernetes.io/{mode}": level for mode, level in modes.items()}
        want |= {f"pod-security.kubernetes.io/{mode}-version": "v1.33" for mode in modes}
        assert labels == want, name


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_pod_passes_each_level_its_namespace_enforces_warns_or_audits(path: str) -> None:
    levels = namespace_levels()
    pods = [o for o in render(path) if has_pod_spec(o)]
    for obj in pods:
        namespace = obj["metadata"]["namespace"]
        assert "restricted" in levels[namespace] or namespace == "mlops"
        for level in sorted(levels[namespace]):
            assert violations(obj, level) == [], f"{path}: {obj['kind']}/{obj['metadata']['name']} ({level})"
    if path in ("base", "serving"):
        assert pods, "a kustomization that should hold pods holds none"


def test_rbac_lets_the_worker_manage_pods_in_mlops_steps_only() -> None:
    objects = render("base")
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    # The other Role, the scheduler's in mlops, is checked in test_cluster_install.py.
    (role,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == "mlops-steps"]
    assert role["metadata"] == {
        "name": "mlops-step-launcher",
        "namespace": "mlops-steps",
        "labels": role["metadata"]["labels"],
    }
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        *(("", "pods", v) for v in ("create", "get", "list", "watch", "patch", "delete")),
        ("", "pods/log", "get"),
        *(("", "events", v) for v in ("get", "list", "watch")),
    }
    assert not any("*" in part for grant in granted for part in grant)
    assert not any(rule.get("resourceNames") or rule.get("nonResourceURLs") for rule in role["rules"])
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == "mlops-steps"]
    assert binding["metadata"]["namespace"] == "mlops-steps"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "mlops-step-launcher",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-airflow-worker", "namespace": "mlops"}]


def test_service_accounts_and_their_tokens() -> None:
    objects = render("base")
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "ServiceAccount"
    }
    assert set(accounts) == {
        ("mlops", "mlops-airflow-worker"),
        ("mlops", "mlops-airflow-scheduler"),
        ("mlops-steps", "mlops-step"),
        ("mlops-steps", "mlops-model-server"),
    }
    assert accounts["mlops-steps", "mlops-step"]["automountServiceAccountToken"] is False
    assert accounts["mlops-steps", "mlops-model-server"]["automountServiceAccountToken"] is False
    assert (
        one(render("serving"), "Deployment", "mlops-model-server")["spec"]["template"]["spec"]["serviceAccountName"]
        == "mlops-model-server"
    )


def share_source(pv: Obj) -> tuple[str, Any]:
    sources = {k: v for k, v in pv["spec"].items() if k in {"nfs", "hostPath", "csi"}}
    assert len(sources) == 1, pv["metadata"]["name"]
    return next(iter(sources.items()))


@pytest.mark.parametrize(
    ("overlay", "source", "access"),
    [("overlays/kind", "hostPath", "ReadWriteOnce"), ("overlays/production", "nfs", "ReadWriteMany")],
)
def test_both_namespaces_claim_the_same_share(overlay: str, source: str, access: str) -> None:
    objects = render(overlay)
    claims = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    volumes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolume"}
    assert set(claims) == {"mlops", "mlops-steps"}
    assert set(volumes) == {"mlops-artifacts-airflow", "mlops-artifacts-steps"}
    assert {share_source(pv)[0] for pv in volumes.values()} == {source}
    assert len({yaml.safe_dump(share_source(pv)) for pv in volumes.values()}) == 1, (
        "the two PVs point at different places"
    )
    for namespace, claim in claims.items():
        assert claim["metadata"]["name"] == "mlops-artifacts"
        pv = volumes[claim["spec"]["volumeName"]]
        assert pv["spec"]["claimRef"] == {"namespace": namespace, "name": "mlops-artifacts"}
        assert claim["spec"]["storageClassName"] == pv["spec"]["storageClassName"] == "mlops-shared"
        assert claim["spec"]["accessModes"] == pv["spec"]["accessModes"] == [access]
        assert claim["spec"]["resources"]["requests"]["storage"] == pv["spec"]["capacity"]["storage"]
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_production_limits_gpus_in_the_steps_namespace() -> None:
    quota = one(render("overlays/production"), "ResourceQuota", "mlops-gpus")
    assert quota["metadata"]["namespace"] == "mlops-steps"
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "8"}


# --------------------------------------------------------------------------- NetworkPolicies


def peers(rule: Obj, direction: str) -> Iterator[tuple[str, ...]]:
    """Each peer of a rule x each port, flattened so that the whole policy compares as a set."""
    key = "from" if direction == "ingress" else "to"
    ports = [(p["protocol"], p["port"]) for p in rule.get("ports", [])] or [("any", "any")]
    for peer in rule.get(key, [{"anywhere": True}]):
        described = yaml.safe_dump(peer, sort_keys=True).strip()
        for protocol, port in ports:
            yield (direction, described, protocol, str(port))


def policy_rules(policy: Obj) -> set[tuple[str, ...]]:
    return {
        p
        for direction in ("ingress", "egress")
        for rule in policy["spec"].get(direction, [])
        for p in peers(rule, direction)
    }


def peer(**selectors: dict[str, str]) -> str:
    return yaml.safe_dump(
        {key: {"matchLabels": labels} if labels else {} for key, labels in selectors.items()}, sort_keys=True
    ).strip()


def test_network_policies_allow_exactly_the_documented_traffic() -> None:
    policies = {o["metadata"]["name"]: o for o in render("base") if o["kind"] == "NetworkPolicy"}
    assert {p["metadata"]["namespace"] for p in policies.values()} == {"mlops-steps"}
    dns = peer(namespaceSelector={"kubernetes.io/metadata.name": "kube-system"}, podSelector={"k8s-app": "kube-dns"})
    server = {"app.kubernetes.io/name": "mlops-model-server"}
    expected: dict[str, tuple[dict[str, str], list[str], set[tuple[str, ...]]]] = {
        "default-deny": ({}, ["Ingress", "Egress"], set()),
        "step-pods-dns-only": (
            {"app.kubernetes.io/name": "mlops-step"},
            ["Egress"],
            {("egress", dns, "UDP", "53"), ("egress", dns, "TCP", "53")},
        ),
        "deploy-step-to-model-server": (
            {"app.kubernetes.io/name": "mlops-step", "mlops/step": "deploy"},
            ["Egress"],
            {("egress", peer(podSelector=server), "TCP", "8501")},
        ),
        "model-server-ingress": (
            server,
            ["Ingress"],
            {
                ("ingress", peer(podSelector={}), "TCP", "8501"),
                ("ingress", peer(podSelector={}), "TCP", "8500"),
                ("ingress", peer(namespaceSelector={"mlops/gateway": "true"}), "TCP", "8501"),
                ("ingress", peer(namespaceSelector={"mlops/gateway": "true"}), "TCP", "8500"),
                ("ingress", peer(namespaceSelector={"kubernetes.io/metadata.name": "monitoring"}), "TCP", "8501"),
            },
        ),
    }
    assert set(policies) == set(expected)
    for name, (selector, types, rules) in expected.items():
        spec = policies[name]["spec"]
        assert spec["podSelector"] == ({"matchLabels": selector} if selector else {}), name
        assert spec["policyTypes"] == types, name
        assert policy_rules(policies[name]) == rules, name
    # The labels the policies select on are the ones the server's pods carry.
    pod_labels = one(render("serving"), "Deployment", "mlops-model-server")["spec"]["template"]["metadata"]["labels"]
    assert server.items() <= pod_labels.items()


# --------------------------------------------------------------------------- the model server


def monitoring_config_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def container_port(container: Obj, name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return port


def container_named(deployment: Obj, name: str) -> Obj:
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return container


def port_owner(deployment: Obj, name_or_number: str | int) -> tuple[Obj, int]:
    """The container that listens on a pod port (by name or number), and the port's number."""
    owners = [
        (c, p["containerPort"])
        for c in pod_spec(deployment)["containers"]
        for p in c.get("ports", [])
        if name_or_number in (p["name"], p["containerPort"])
    ]
    assert len(owners) == 1, f"port {name_or_number}: {len(owners)} containers"
    return owners[0]


def test_tf_serving_reads_the_registry_config_and_exports_metrics() -> None:
    objects = render("serving")
    deployment = one(objects, "Deployment", "mlops-model-server", "mlops-steps")
    container = container_named(deployment, "server")
    assert pod_spec(deployment)["containers"][0] is container  # the overlays and Terraform patch index 0
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", container["image"]), container["image"]
    # TF Serving X.Y serves what TensorFlow X.Y exports: keep the image in step with the pinned TensorFlow.
    pinned_tf = re.search(r"^tensorflow==(\d+\.\d+)\.", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned_tf is not None and container["image"].split(":")[1].startswith(pinned_tf[1] + ".")
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert container["command"] == ["tensorflow_model_server"]
    assert args["model_config_file"] == MODELS_CONFIG
    assert int(args["model_config_file_poll_wait_seconds"]) > 0
    # REST inside the pod only: the request logger owns the pod's REST port (8501).
    assert (args["rest_api_port"], args["port"]) == ("8502", "8500")

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    share = next(
        n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == "mlops-artifacts"
    )
    assert mounts[share]["mountPath"] == str(SHARE) and mounts[share]["readOnly"] is True
    assert MODELS_CONFIG.startswith(mounts[share]["mountPath"] + "/")

    # --monitoring_config_file names the ConfigMap's key, whose text is include/monitoring/monitoring.config.
    config_dir, config_key = args["monitoring_config_file"].rsplit("/", 1)
    (config_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_dir]
    config_map = one(objects, "ConfigMap", volumes[config_mount["name"]]["configMap"]["name"], "mlops-steps")
    reference = (ROOT / "include" / "monitoring" / "monitoring.config").read_text()
    assert monitoring_config_lines(config_map["data"][config_key]) == monitoring_config_lines(reference)
    metrics_path = re.search(r'path:\s*"([^"]+)"', reference)
    assert metrics_path is not None

    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert container_port(container, get["port"]) == 8502 and get["path"] == metrics_path[1], probe
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert set(limits) == set(requests) == {"cpu", "memory"}


@pytest.mark.parametrize("path", SERVERS)
def test_service_hpa_and_pdb_match_the_server(path: str) -> None:
    objects = render(path)
    deployment = one(objects, "Deployment", "mlops-model-server", "mlops-steps")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service", "mlops-model-server", "mlops-steps")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    targets = {p["name"]: port_owner(deployment, p["targetPort"]) for p in service["spec"]["ports"]}
    served = {p["name"]: (p["port"], targets[p["name"]][1]) for p in service["spec"]["ports"]}
    expected = {"http": (8501, 8501)} if "project-server" in path else {"http": (8501, 8501), "grpc": (8500, 8500)}
    assert served == expected
    # REST goes to the request logger, except where the project server logs by itself; gRPC to TF Serving.
    http_owner = targets["http"][0]
    assert http_owner["name"] == ("server" if "project-server" in path else "request-logger")
    if "grpc" in targets:
        assert targets["grpc"][0]["name"] == "server"
    pod_ports = {p["containerPort"] for c in pod_spec(deployment)["containers"] for p in c["ports"]}
    # The one port the Service leaves out is TF Serving's REST port, which only the request logger calls.
    assert pod_ports - {port for port, _ in expected.values()} == (set() if "project-server" in path else {8502})
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8501"
    assert annotations["prometheus.io/path"] == http_owner["readinessProbe"]["httpGet"]["path"]
    container = container_named(deployment, "server")

    hpa = one(objects, "HorizontalPodAutoscaler", "mlops-model-server", "mlops-steps")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mlops-model-server",
    }
    ((metric,),) = [hpa["spec"]["metrics"]]
    assert metric["resource"]["name"] == "cpu" and "cpu" in container["resources"]["requests"]
    pdb = one(objects, "PodDisruptionBudget", "mlops-model-server", "mlops-steps")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block every node drain"


def test_project_server_overlay_runs_the_local_server_on_the_same_registry() -> None:
    from include.mlops.serving.__main__ import build_parser
    from include.mlops.serving.app import METRICS_PATH

    deployment = one(render("serving/overlays/project-server"), "Deployment", "mlops-model-server", "mlops-steps")
    (container,) = pod_spec(deployment)["containers"]
    assert container["image"] == "registry.example.com/mlops-server:0.1.0"
    assert container["command"] == ["python", "-m", "include.mlops.serving"]
    args = build_parser().parse_args(container["args"])
    assert args.registry / CONFIG_FILE == Path(MODELS_CONFIG)
    assert args.host == "0.0.0.0" and args.port == container_port(container, "http") == 8501
    assert not args.no_predlog and args.predlog_root == SHARE
    assert (
        container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == METRICS_PATH
    )
    # It writes the prediction log onto the share, so here the share is mounted read-write.
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(SHARE)]
    assert mount["readOnly"] is False
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLOPS_ARTIFACT_ROOT"] == str(SHARE)


@pytest.mark.parametrize("path", ["serving", "serving/canary"])
def test_request_logger_sidecar_logs_what_tf_serving_answers(path: str) -> None:
    """The default install gets drift: a request logger on the pod's REST port in front of TF Serving."""
    from include.mlops.serving.app import METRICS_PATH
    from include.mlops.serving.request_logger import build_parser

    for deployment in (o for o in render(path) if o["kind"] == "Deployment"):
        server, logger = pod_spec(deployment)["containers"]
        assert (server["name"], logger["name"]) == ("server", "request-logger")
        assert logger["image"] == "registry.example.com/mlops-trainer:0.1.0"
        assert logger["command"] == ["python", "-m", "include.mlops.serving.request_logger"]
        args = build_parser().parse_args(logger["args"])
        # It listens on the pod's REST port and calls TF Serving's REST port on loopback.
        assert args.host == "0.0.0.0" and args.port == container_port(logger, "http") == 8501
        tf_args = dict(arg.removeprefix("--").split("=", 1) for arg in server["args"])
        assert args.upstream == f"http://127.0.0.1:{tf_args['rest_api_port']}" == "http://127.0.0.1:8502"
        assert container_port(server, "tfs-http") == 8502
        # It writes the prediction log where the project server does and the drift check reads it.
        assert args.predlog_root == SHARE
        env = {e["name"]: e["value"] for e in logger["env"]}
        assert env["MLOPS_ARTIFACT_ROOT"] == str(SHARE) and env["HOME"] == "/tmp"
        mounts = {m["mountPath"]: m for m in logger["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        share = mounts[str(SHARE)]
        assert not share.get("readOnly", False)
        assert volumes[share["name"]]["persistentVolumeClaim"] == {"claimName": "mlops-artifacts"}
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"]
        (server_share,) = [m for m in server["volumeMounts"] if m["name"] == share["name"]]
        assert server_share["readOnly"] is True, "TF Serving only reads the share"
        # Secured and sized like TF Serving.
        assert logger["securityContext"] == server["securityContext"]
        assert logger["securityContext"]["readOnlyRootFilesystem"] is True
        assert set(logger["resources"]["limits"]) == set(logger["resources"]["requests"]) == {"cpu", "memory"}
        # Ready when a request through it reaches TF Serving; alive while it accepts connections.
        assert logger["readinessProbe"]["httpGet"] == {"path": METRICS_PATH, "port": "http"}
        assert logger["livenessProbe"]["tcpSocket"] == {"port": "http"}


def test_request_logger_image_is_the_step_image() -> None:
    """serving/base names the trainer image as include/k8s/base does (one image, one tag)."""

    def entries(folder: str) -> dict[str, Obj]:
        kustomization = yaml.safe_load((K8S_DIR / folder / "kustomization.yaml").read_text())
        return {e["name"]: e for e in kustomization["images"]}

    assert entries("serving/base")["mlops-trainer"] == entries("base")["mlops-trainer"]
    (prepare,) = pod_spec(job("mlops-prepare-share"))["containers"]
    deployment = one(render("serving"), "Deployment", "mlops-model-server", "mlops-steps")
    assert container_named(deployment, "request-logger")["image"] == prepare["image"]


# --------------------------------------------------------------------------- Jobs


def job(name: str) -> Obj:
    return next(o for o in render("base") if o["kind"] == "Job" and o["metadata"]["name"] == name)


def test_jobs_images_come_from_the_kustomization_and_match_the_helm_values() -> None:
    values = yaml.safe_load((K8S_DIR / "helm" / "values.yaml").read_text())
    airflow_image = f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}"
    (pool,) = pod_spec(job("mlops-create-deploy-pool"))["containers"]
    assert pool["image"] == airflow_image
    (prepare,) = pod_spec(job("mlops-prepare-share"))["containers"]
    assert prepare["image"].startswith("registry.example.com/mlops-trainer:")


def test_prepare_share_job_sets_up_the_shared_group_layout(tmp_path: Path) -> None:
    prepare = job("mlops-prepare-share")
    spec = pod_spec(prepare)
    assert prepare["metadata"]["namespace"] == "mlops-steps"
    context = spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (1000, 1000, 1000)
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (mount,) = container["volumeMounts"]
    assert env["MLOPS_ARTIFACT_ROOT"] == mount["mountPath"] == str(SHARE)
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mlops-artifacts"

    # Run the Job's own script on a local folder standing in for the share, twice (it must be re-runnable).
    root = tmp_path / "share"
    root.mkdir()
    for _ in range(2):
        result = subprocess.run(
            [*container["command"], *container["args"]],
            env={"PATH": os.environ["PATH"], "MLOPS_ARTIFACT_ROOT": str(root)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    for folder in ("runs", "models"):
        assert stat.S_IMODE((root / folder).stat().st_mode) == 0o2775, folder
    config = registry_root(root) / CONFIG_FILE
    assert stat.S_IMODE(config.stat().st_mode) == 0o664
    # An empty config that the registry reads (and TF Serving starts on): no models yet.
    assert len(Registry(registry_root(root)).read_serving_config().model_config_list.config) == 0


def test_prepare_share_job_says_what_to_do_when_the_share_is_not_writable() -> None:
    (container,) = pod_spec(job("mlops-prepare-share"))["containers"]
    # As root every folder is writable: drop to "nobody" for the script, as the pod runs unprivileged.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux) to run the script as an ordinary user")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        root = Path(folder) / "share"
        root.mkdir(mode=0o555)
        result = subprocess.run(
            [*prefix, *container["command"], *container["args"]],
            env={"PATH": os.environ["PATH"], "MLOPS_ARTIFACT_ROOT": str(root)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert f"{root} is not writable" in result.stderr and "chown 1000:1000" in result.stderr
    assert not (root / "runs").exists()


def test_deploy_pool_job_reads_the_metadata_secret() -> None:
    pool = job("mlops-create-deploy-pool")
    assert pool["metadata"]["namespace"] == "mlops"
    (container,) = pod_spec(pool)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"] == {
        "secretKeyRef": {"name": "mlops-airflow-metadata", "key": "connection"}
    }
    assert not any("value" in e and "sql" in e["value"].lower() for e in container["env"])


@pytest.mark.slow
def test_deploy_pool_job_command_creates_the_pool_on_a_real_airflow_db(tmp_path: Path) -> None:
    """The Job's exact command against a migrated SQLite DB, with the Job's own AIRFLOW_HOME layout."""
    (container,) = pod_spec(job("mlops-create-deploy-pool"))["containers"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")  # the Job's /tmp/airflow, under this test's tmp
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'airflow.db'}"
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    result = subprocess.run(
        [*container["command"], *container["args"]], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = subprocess.run(
        [*airflow, "pools", "get", "model_deploy", "--output", "yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (pool,) = yaml.safe_load(listed.stdout)
    assert str(pool["slots"]) == "1"
    assert str(pool["include_deferred"]) == "True"
    listed = subprocess.run(
        [*airflow, "pools", "get", "mlops_tuning", "--output", "yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (tuning,) = yaml.safe_load(listed.stdout)
    # Deferred trial pods hold their slot, or the pool would not bound the trials training at once.
    assert str(tuning["slots"]) == "2" and str(tuning["include_deferred"]) == "True"
