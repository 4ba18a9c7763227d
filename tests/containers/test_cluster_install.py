"""What an install puts in the cluster, over every rendering: kustomize of each kustomization in include/k8s and
the Terraform module's evaluation (tests/terraform_module.py), checked offline.

- a private registry works: every pod template and ServiceAccount names the pull Secret, as the Helm values do;
- nothing grants pods/exec or pods/attach (the project's Roles, the chart switch that drops its own);
- no Deployment that an HPA scales sets spec.replicas (a re-apply would reset the HPA's count);
- the ServiceMonitor carries the label kube-prometheus-stack selects and validates against its CRD schema.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from terraform_module import evaluate
from tooling import require_executable

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "include" / "k8s"
VALUES = yaml.safe_load((K8S_DIR / "helm" / "values.yaml").read_text())
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(K8S_DIR)) for p in K8S_DIR.rglob("kustomization.yaml"))
SERVICE_MONITOR_CRD = ROOT.parent / "shared" / "vendor" / "crds" / "monitoring.coreos.com_servicemonitors.yaml"
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
PULL_SECRET = VALUES["registry"]["secretName"]
TF_INPUTS: dict[str, Any] = {
    "artifact_share": {"nfs": {"server": "nfs.example.internal", "path": "/exports/x"}},
    "image": {"repository": "registry.example.com/airflow-tf-lifecycle", "tag": "0.1.0"},
    "install_service_monitor": True,
}
Obj = dict[str, Any]


@cache
def kustomize(path: str) -> tuple[Obj, ...]:
    kubectl = require_executable("kubectl", "these tests render include/k8s with `kubectl kustomize`")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / path)], capture_output=True, text=True, timeout=60, check=True
    )
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def terraform_objects(tmp: Path, **overrides: Any) -> list[Obj]:
    value, stderr = evaluate(
        tmp, "{objects = local.applied_objects, values = local.release_values}", {**TF_INPUTS, **overrides}
    )
    assert value is not None, stderr
    return [*value["objects"], {"kind": "_release_values", **value["values"]}]


@pytest.fixture(scope="module")
def terraform_default(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return terraform_objects(tmp_path_factory.mktemp("tf"))


def every_rendering(terraform: list[Obj]) -> dict[str, list[Obj]]:
    return {**{path: list(kustomize(path)) for path in KUSTOMIZATIONS}, "terraform": terraform}


def name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


# --- private registry -----------------------------------------------------------------------------------


def pull_secrets(objects: list[Obj]) -> dict[str, list[str] | None]:
    """Every ServiceAccount and pod template, with the pull Secrets it names (None: the key is absent)."""
    found: dict[str, list[str] | None] = {}
    for obj in objects:
        holder = obj if obj["kind"] == "ServiceAccount" else None
        if obj["kind"] in POD_TEMPLATE_KINDS:
            holder = obj["spec"]["template"]["spec"]
        if holder is not None:
            secrets = holder.get("imagePullSecrets")
            found[name(obj)] = None if secrets is None else [s["name"] for s in secrets]
    return found


def test_every_pod_and_service_account_names_the_pull_secret_of_the_helm_values(terraform_default: list[Obj]) -> None:
    assert PULL_SECRET, "include/k8s/helm/values.yaml: registry.secretName names the pull Secret for chart pods"
    step_pods = next(e for e in VALUES["extraEnv"].splitlines() if "MLOPS_K8S_IMAGE_PULL_SECRETS" in e)
    assert step_pods, "step pods get the pull Secret through MLOPS_K8S_IMAGE_PULL_SECRETS"
    for rendering, objects in every_rendering(terraform_default).items():
        found = pull_secrets(objects)
        missing = {key: value for key, value in found.items() if value != [PULL_SECRET]}
        assert not missing, f"{rendering}: these pull no private image: {missing}"
    accounts = {key for key in pull_secrets(list(kustomize("base"))) if key.startswith("ServiceAccount/")}
    assert len(accounts) == 4, accounts
    assert {obj["registry"]["secretName"] for obj in terraform_default if obj["kind"] == "_release_values"} == {
        PULL_SECRET
    }


def test_terraform_renames_or_drops_the_pull_secret_everywhere(tmp_path: Path) -> None:
    renamed = terraform_objects(tmp_path / "renamed", image_pull_secret="corp-pull")
    assert set(map(tuple, filter(None, pull_secrets(renamed).values()))) == {("corp-pull",)}
    assert None not in pull_secrets(renamed).values()
    assert next(o for o in renamed if o["kind"] == "_release_values")["registry"] == {"secretName": "corp-pull"}
    dropped = terraform_objects(tmp_path / "dropped", image_pull_secret=None)
    assert set(pull_secrets(dropped).values()) == {None}
    # null in the last values document removes values.yaml's registry.secretName from the release.
    assert next(o for o in dropped if o["kind"] == "_release_values")["registry"] == {"secretName": None}


def test_the_documented_kustomize_patch_renames_the_pull_secret(tmp_path: Path) -> None:
    readme = (K8S_DIR / "README.md").read_text()
    section = readme.split("## Private registry", 1)[1].split("\n## ", 1)[0]
    patch = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    overlay = yaml.safe_load(patch)
    # kustomize takes bases by relative path only.
    overlay["resources"] = [os.path.relpath(K8S_DIR / d, tmp_path) for d in ("overlays/production", "serving")]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    kubectl = require_executable("kubectl", "renders the README's overlay")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    found = pull_secrets([doc for doc in yaml.safe_load_all(out.stdout) if doc])
    assert found and set(map(tuple, filter(None, found.values()))) == {("corp-registry",)}, found
    assert None not in found.values()


# --- no exec --------------------------------------------------------------------------------------------


def grants(objects: list[Obj]) -> set[tuple[str, str, str, str]]:
    return {
        (name(obj), resource, verb, group)
        for obj in objects
        if obj["kind"] in {"Role", "ClusterRole"}
        for rule in obj.get("rules", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def exec_grants(objects: list[Obj]) -> list[tuple[str, str, str, str]]:
    return [
        grant
        for grant in grants(objects)
        if grant[3] in {"", "*"} and grant[1] in {"pods/exec", "pods/attach", "pods/*", "*"}
    ]


def test_no_role_of_the_project_grants_exec_and_the_chart_grants_none_either(terraform_default: list[Obj]) -> None:
    for rendering, objects in every_rendering(terraform_default).items():
        assert exec_grants(objects) == [], rendering
    # The chart's pod-launcher Role (pods/exec for the scheduler, workers and triggerer) is the one chart Role
    # with exec; allowPodLaunching turns it off, and rbac.yaml gives the scheduler what it needs instead.
    assert VALUES["allowPodLaunching"] is False
    scheduler = VALUES["scheduler"]["serviceAccount"]
    assert scheduler == {"create": False, "name": "mlops-airflow-scheduler"}
    objects = list(kustomize("base"))
    bindings = [
        o
        for o in objects
        if o["kind"] == "RoleBinding"
        and o["metadata"]["namespace"] == "mlops"
        and {"kind": "ServiceAccount", "name": scheduler["name"], "namespace": "mlops"} in o["subjects"]
    ]
    (binding,) = bindings
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == binding["roleRef"]["name"])
    launcher = {(resource, verb) for _, resource, verb, _ in grants([role])}
    assert {("pods", v) for v in ("create", "get", "list", "watch", "patch", "delete")} <= launcher
    assert ("ServiceAccount", scheduler["name"]) in {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_the_exec_check_catches_an_exec_grant() -> None:
    role = {
        "kind": "Role",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}],
    }
    assert exec_grants([role])
    role["rules"][0]["resources"] = ["*"]
    assert exec_grants([role])


# --- the HPA owns the replica count ---------------------------------------------------------------------


def test_no_deployment_an_hpa_scales_sets_replicas(terraform_default: list[Obj]) -> None:
    scaled_somewhere = False
    for rendering, objects in every_rendering(terraform_default).items():
        for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]
            (deployment,) = [
                o
                for o in objects
                if o["kind"] == target["kind"]
                and o["metadata"]["name"] == target["name"]
                and o["metadata"].get("namespace") == hpa["metadata"].get("namespace")
            ]
            assert "replicas" not in deployment["spec"], f"{rendering}: {name(deployment)} fights its HPA"
            scaled_somewhere = True
    assert scaled_somewhere, "no HPA found: the test checks nothing"


# --- the ServiceMonitor ---------------------------------------------------------------------------------


def service_monitor_schema() -> Obj:
    if not SERVICE_MONITOR_CRD.exists():
        pytest.skip(f"the vendored CRD {SERVICE_MONITOR_CRD} is not beside this checkout")
    crd = yaml.safe_load(SERVICE_MONITOR_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_the_service_monitor_is_selected_by_kube_prometheus_stack_and_valid(
    terraform_default: list[Obj], tmp_path: Path
) -> None:
    schema = service_monitor_schema()
    monitors = [
        (rendering, obj)
        for rendering, objects in every_rendering(terraform_default).items()
        for obj in objects
        if obj["kind"] == "ServiceMonitor"
    ]
    assert {rendering for rendering, _ in monitors} == {"serving/monitoring", "terraform"}
    for rendering, monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack", rendering
        jsonschema.validate(monitor, schema)
    relabelled = terraform_objects(tmp_path, service_monitor_labels={"prometheus": "main"})
    (monitor,) = [o for o in relabelled if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["prometheus"] == "main" and "release" not in monitor["metadata"]["labels"]


def test_the_documented_kustomize_label_override_reaches_the_service_monitor(tmp_path: Path) -> None:
    text = (K8S_DIR / "serving" / "monitoring" / "kustomization.yaml").read_text()
    lines = text.split("For another one, a kustomization of your own:\n", 1)[1].split("# The alert rules", 1)[0]
    overlay = yaml.safe_load("\n".join(line.removeprefix("#   ") for line in lines.splitlines()))
    overlay["resources"] = [os.path.relpath(K8S_DIR / "serving" / "monitoring", tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    kubectl = require_executable("kubectl", "renders the documented overlay")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (monitor,) = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert monitor["metadata"]["labels"]["release"] == "my-prometheus"
    jsonschema.validate(monitor, service_monitor_schema())
