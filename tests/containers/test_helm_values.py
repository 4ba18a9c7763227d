"""The values for the official Airflow Helm chart, checked offline against the contract and the manifests.

Without ``helm`` and the chart these tests read ``include/k8s/helm/values.yaml``
as data: the chart version it records, names that must agree with what
``kubectl kustomize`` renders from ``include/k8s`` (namespaces, service
accounts, claims, the model server's Service), image settings derived from one
place, no password-like literal, and every security context it sets judged
by the project's Pod Security checker as the pod it ends up in.

The ``helm``-marked test goes further when ``helm`` is on PATH and
``MLOPS_AIRFLOW_CHART`` names the chart (a ``.tgz`` or a folder): ``helm lint``,
``helm template`` into namespace ``mlops``, every rendered object validated
against the Kubernetes 1.33 schema, and every rendered pod against ``restricted``.
"""

from __future__ import annotations

import copy
import importlib
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tooling import require_executable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = PROJECT_ROOT / "include" / "k8s"
VALUES_PATH = K8S_DIR / "helm" / "values.yaml"
PRODUCTION_DOC = PROJECT_ROOT / "docs" / "production.md"
CHART_VERSION = "1.22.0"
CHART_LINE = re.compile(r"^# Chart: apache-airflow/airflow --version (\S+)$", re.MULTILINE)
# `helm upgrade|install|template|pull ... --version X`, across shell line continuations.
HELM_COMMAND_VERSION = re.compile(r"helm (?:upgrade|install|template|pull)\b[^\n]*?(?:\\\n[^\n]*?)*--version (\S+)")
RELEASE_NAMESPACE = "mlops"  # the contract: Airflow's own namespace
K8S_VERSION = "1.33"
SHARED_GID = 1000  # docs/shared-storage.md: the artifact share's group
OVERLAYS = sorted(p.parent.name for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))
# Every chart pod or sidecar that runs with these values (the rest are disabled); each needs a context.
EXPECTED_CONTEXTS = {
    "scheduler",
    "scheduler.logGroomerSidecar",
    "scheduler.waitForMigrations",
    "apiServer",
    "apiServer.waitForMigrations",
    "dagProcessor",
    "dagProcessor.logGroomerSidecar",
    "dagProcessor.waitForMigrations",
    "triggerer",
    "triggerer.logGroomerSidecar",
    "triggerer.waitForMigrations",
    "workers",
    "migrateDatabaseJob",
    "cleanup",
}
SECRET_WORDS = re.compile(r"pass(word)?|secret|token|fernet|private|credential|(^|_)key$", re.IGNORECASE)
URL_WITH_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", re.IGNORECASE)


def load_values(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(VALUES_PATH.read_text() if text is None else text)


def static_env(values: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in values["env"]}


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# `{{- if not (contains "/" .Values.X) }}{{ fail "message" }}{{ end }}`: a guard that stops the install.
FAIL_GUARD = re.compile(
    r'\{\{-?\s*if not \(contains "([^"]*)" \.Values\.([\w.]+)\)\s*-?\}\}\{\{-?\s*fail "([^"]*)"\s*-?\}\}\{\{-?\s*end\s*-?\}\}'
)


class TemplateFailure(Exception):
    """What Helm's ``fail`` would stop the install with."""


def render_tpl(template: str, values: dict[str, Any]) -> str:
    """Render the few Go-template forms the values use (what the chart's ``tpl`` would do); refuse others."""

    def guard(match: re.Match[str]) -> str:
        if match.group(1) not in str(lookup(values, match.group(2))):
            raise TemplateFailure(match.group(3))
        return ""

    template = FAIL_GUARD.sub(guard, template)

    def expression(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if m := re.fullmatch(r'\.Values\.([\w.]+)\s*\|\s*default\s+"([^"]*)"', expr):
            return str(lookup(values, m.group(1)) or m.group(2))
        if m := re.fullmatch(r"dir\s+\.Values\.([\w.]+)", expr):
            return posixpath.dirname(str(lookup(values, m.group(1))))
        if m := re.fullmatch(r"\.Values\.([\w.]+)", expr):
            return str(lookup(values, m.group(1)))
        raise AssertionError(f"extraEnv uses a template expression this test cannot check: {{{{ {expr} }}}}")

    return re.sub(r"\{\{-?(.*?)-?\}\}", expression, template)


def templated_env(values: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in yaml.safe_load(render_tpl(values["extraEnv"], values))}


def password_like_literals(node: Any, path: str = "") -> list[str]:
    """Paths in the values where a secret would be written in clear (a Secret's *name* is fine)."""
    found: list[str] = []
    if isinstance(node, dict):
        if "name" in node and "value" in node and SECRET_WORDS.search(str(node["name"])) and node["value"]:
            found.append(f"{path}.{node['name']}")
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(value, str | int | float) and value != "" and SECRET_WORDS.search(str(key)):
                if not str(key).lower().endswith("secretname"):
                    found.append(here)
            found += password_like_literals(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += password_like_literals(item, f"{path}[{index}]")
    elif isinstance(node, str) and URL_WITH_CREDENTIALS.match(node):
        found.append(path)
    return found


def helm_layer(base: Any, override: Any) -> Any:
    """``-f base -f override`` as Helm merges them: maps key by key, anything else (lists too) replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: helm_layer(base.get(key), value) for key, value in override.items()}}
    return override


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = require_executable("kubectl", "the manifest checks render include/k8s with `kubectl kustomize`")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] == kind and meta["name"] == name and (namespace is None or meta.get("namespace") == namespace):
            return obj
    where = f" in namespace {namespace}" if namespace else ""
    raise AssertionError(f"the manifests define no {kind} {name}{where}, but the Helm values name it")


def security_context_blocks(node: Any, path: str = "") -> dict[str, dict[str, Any]]:
    """Every ``securityContexts`` block in the values, by the dotted path of its owner."""
    blocks: dict[str, dict[str, Any]] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "securityContexts":
                blocks[path] = value
            else:
                blocks.update(security_context_blocks(value, f"{path}.{key}" if path else key))
    return blocks


def test_chart_version_is_recorded_and_the_docs_install_that_version() -> None:
    text = VALUES_PATH.read_text()
    assert CHART_LINE.findall(text) == [CHART_VERSION], "values.yaml must record '# Chart: ... --version 1.22.0'"
    for source in (text, PRODUCTION_DOC.read_text()):
        helm_versions = HELM_COMMAND_VERSION.findall(source)
        assert helm_versions and set(helm_versions) == {CHART_VERSION}


def test_executor_and_airflow_version_match_the_image() -> None:
    values = load_values()
    assert values["executor"] == "KubernetesExecutor"
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (PROJECT_ROOT / "requirements.txt").read_text(), re.MULTILINE))
    assert values["airflowVersion"] == pins["apache-airflow"], "airflowVersion must equal the image's Airflow pin"


# What chart 1.22 puts in [core] auth_manager when the values leave it unset (Airflow 3).
CHART_DEFAULT_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def test_the_auth_manager_the_chart_runs_is_installed_by_the_image() -> None:
    # The image installs requirements.txt; an auth manager it lacks keeps the API server from starting.
    auth_manager = load_values().get("config", {}).get("core", {}).get("auth_manager", CHART_DEFAULT_AUTH_MANAGER)
    module, _, name = auth_manager.rpartition(".")
    assert hasattr(importlib.import_module(module), name), auth_manager
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (PROJECT_ROOT / "requirements.txt").read_text(), re.MULTILINE))
    assert "apache-airflow-providers-fab" in pins or "fab" not in module


# The overlay without the share goes with the values file that drops it (layered on values.yaml).
OBJECT_STORAGE = {"object-storage": K8S_DIR / "helm" / "values-object-storage.yaml"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_agree_with_the_manifests(overlay: str) -> None:
    values = load_values()
    if overlay in OBJECT_STORAGE:
        values = helm_layer(values, yaml.safe_load(OBJECT_STORAGE[overlay].read_text()))
    env = static_env(values)
    objects = kustomize(K8S_DIR / "overlays" / overlay)
    steps_namespace = env["MLOPS_K8S_NAMESPACE"]
    assert steps_namespace != RELEASE_NAMESPACE, "step pods run in their own (restricted) namespace"
    find(objects, "Namespace", RELEASE_NAMESPACE)
    find(objects, "Namespace", steps_namespace)
    worker_sa = values["workers"]["kubernetes"]["serviceAccount"]
    for owner in (worker_sa, values["workers"]["serviceAccount"], values["triggerer"]["serviceAccount"]):
        assert owner["create"] is False and owner["name"] == worker_sa["name"]
    find(objects, "ServiceAccount", worker_sa["name"], RELEASE_NAMESPACE)
    find(objects, "ServiceAccount", env["MLOPS_K8S_SERVICE_ACCOUNT"], steps_namespace)
    if overlay in OBJECT_STORAGE:
        # No share: no claim in the manifests, none named by the values.
        assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
        assert values["workers"]["extraVolumes"] == [] and "MLOPS_K8S_ARTIFACT_PVC" not in env
    else:
        (volume,) = values["workers"]["extraVolumes"]
        find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], RELEASE_NAMESPACE)
        find(objects, "PersistentVolumeClaim", env["MLOPS_K8S_ARTIFACT_PVC"], steps_namespace)
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"].get("namespace") == steps_namespace]
    subjects = [(s["kind"], s["name"], s.get("namespace")) for b in bindings for s in b.get("subjects", [])]
    assert ("ServiceAccount", worker_sa["name"], RELEASE_NAMESPACE) in subjects


def test_model_server_connection_is_the_serving_service() -> None:
    serving = K8S_DIR / "serving"
    if not (serving / "kustomization.yaml").exists():
        pytest.skip("include/k8s/serving is not in this tree yet")
    service = find(kustomize(serving), "Service", "mlops-model-server")
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    # Its extra config_poll_seconds is the server's own config poll, so that a deploy waits for every replica.
    containers = find(kustomize(serving), "Deployment", "mlops-model-server")["spec"]["template"]["spec"]["containers"]
    [server] = [c for c in containers if c["name"] == "server"]
    flag = "--model_config_file_poll_wait_seconds="
    [poll] = [arg.removeprefix(flag) for arg in server["args"] if arg.startswith(flag)]
    connection = static_env(load_values())["AIRFLOW_CONN_MODEL_SERVER_DEFAULT"]
    assert connection == f"http://{host}:{http['port']}?config_poll_seconds={poll}"


def test_workers_mount_the_artifact_root_where_step_pods_do() -> None:
    values = load_values()
    env = static_env(values)
    (mount,) = values["workers"]["extraVolumeMounts"]
    (volume,) = values["workers"]["extraVolumes"]
    assert mount["name"] == volume["name"]
    assert mount["mountPath"] == env["MLOPS_ARTIFACT_ROOT"] == env["MLOPS_K8S_ARTIFACT_ROOT"] == "/mnt/mlops-artifacts"
    # A PVC is namespaced: the contract gives each namespace a claim of the same name on the same share.
    assert volume["persistentVolumeClaim"]["claimName"] == env["MLOPS_K8S_ARTIFACT_PVC"] == "mlops-artifacts"
    assert env["MLOPS_BACKEND"] == "kubernetes"


def test_trainer_images_and_pull_secret_derive_from_one_place() -> None:
    text = VALUES_PATH.read_text()
    values = load_values(text)
    repository, tag = values["images"]["airflow"]["repository"], values["images"]["airflow"]["tag"]
    registry_path = posixpath.dirname(repository)
    assert text.count(registry_path) == 1, f"{registry_path} must be written once (images.airflow.repository)"
    assert not {"MLOPS_TRAINER_IMAGE", "MLOPS_TRAINER_GPU_IMAGE"} & set(static_env(values)), "no fixed image name"
    env = templated_env(values)
    assert env["MLOPS_TRAINER_IMAGE"] == f"{registry_path}/mlops-trainer:{tag}"
    assert env["MLOPS_TRAINER_GPU_IMAGE"] == f"{registry_path}/mlops-trainer:{tag}-gpu"
    assert env["MLOPS_K8S_IMAGE_PULL_SECRETS"] == values["registry"]["secretName"]
    # A private registry is one change: move images.airflow and every derived name follows.
    moved = copy.deepcopy(values)
    moved["images"]["airflow"].update(repository="harbor.corp.internal/ml/airflow", tag="2.0.0")
    moved["registry"]["secretName"] = None
    assert templated_env(moved) == {
        "MLOPS_TRAINER_IMAGE": "harbor.corp.internal/ml/mlops-trainer:2.0.0",
        "MLOPS_TRAINER_GPU_IMAGE": "harbor.corp.internal/ml/mlops-trainer:2.0.0-gpu",
        "MLOPS_K8S_IMAGE_PULL_SECRETS": "",
    }


@pytest.mark.parametrize("repository", ["airflow-tf-lifecycle", "mlops-trainer"])
def test_a_repository_without_a_registry_path_stops_the_install(repository: str) -> None:
    # Helm's `dir` of a bare name is ".", which would name the trainer image "./mlops-trainer:<tag>".
    values = load_values()
    values["images"]["airflow"]["repository"] = repository
    with pytest.raises(TemplateFailure, match="must include its registry path"):
        templated_env(values)


def test_no_password_like_literal_and_secrets_are_existing_secrets() -> None:
    values = load_values()
    assert password_like_literals(values) == []
    for dotted in ("data.metadataSecretName", "fernetKeySecretName", "jwtSecretName", "apiSecretKeySecretName"):
        assert isinstance(lookup(values, dotted), str) and lookup(values, dotted), f"{dotted} must name a Secret"
    assert values["postgresql"]["enabled"] is False, "the bundled PostgreSQL comes with a default password"
    for switch in ("createUserJob.enabled", "webserver.defaultUser.enabled"):
        assert lookup(values, switch) is False, f"{switch}: the create-user job makes an Admin with a known password"
    assert "metadataConnection" not in values["data"]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"data": {"metadataConnection": {"user": "postgres", "pass": "postgres"}}}, "data.metadataConnection.pass"),
        ({"fernetKey": "c2VjcmV0"}, "fernetKey"),
        ({"apiSecretKey": "abc"}, "apiSecretKey"),
        ({"createUserJob": {"defaultUser": {"password": "admin"}}}, "createUserJob.defaultUser.password"),
        ({"env": [{"name": "AIRFLOW__API_AUTH__JWT_SECRET", "value": "x"}]}, "env[0].AIRFLOW__API_AUTH__JWT_SECRET"),
        ({"env": [{"name": "X", "value": "postgresql://u:hunter2@db/airflow"}]}, "env[0].value"),
    ],
)
def test_the_password_check_catches_clear_secrets(patch: dict[str, Any], expected: str) -> None:
    assert expected in password_like_literals(patch)


def test_every_security_context_passes_restricted_as_the_pod_it_runs_in() -> None:
    pod_security = pytest.importorskip("tools.pod_security", reason="the Pod Security checker (tools/) is absent")
    values = load_values()
    blocks = security_context_blocks(values)
    default_pod = blocks.pop("")["pod"]
    assert EXPECTED_CONTEXTS <= set(blocks), f"no securityContexts for {sorted(EXPECTED_CONTEXTS - set(blocks))}"
    failures = {}
    for owner, block in blocks.items():
        # A sidecar (container only) runs in its component's pod, which has the default pod context or its own.
        pod_context = (
            block.get("pod") or lookup(values, f"{owner.rsplit('.', 1)[0]}.securityContexts.pod") or default_pod
        )
        component = lookup(values, owner) or {}
        spec = {
            "securityContext": pod_context,
            "containers": [{"name": "c", "image": "i", "securityContext": block["container"]}],
            "volumes": component.get("extraVolumes", []),
        }
        if violations := pod_security.restricted_violations(spec):
            failures[owner] = violations
        assert pod_context["runAsUser"] == values["uid"] and pod_context["runAsGroup"] == values["gid"], owner
        assert pod_context["fsGroup"] == SHARED_GID and SHARED_GID in pod_context["supplementalGroups"], owner
    assert failures == {}


def test_task_logs_survive_worker_pod_deletion_and_dags_come_from_the_image() -> None:
    values = load_values()
    remote = str(lookup(values, "config.logging.remote_logging")).lower() == "true"
    assert values["logs"]["persistence"]["enabled"] or remote
    assert values["dags"]["gitSync"]["enabled"] is False and values["dags"]["persistence"]["enabled"] is False
    env = static_env(values)
    project, plugins = env["PYTHONPATH"].split(":")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{project}/dags"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == plugins == f"{project}/plugins"


def test_project_paths_are_the_ones_the_airflow_image_bakes_in() -> None:
    dockerfiles = pytest.importorskip("dockerfiles", reason="tests/dockerfiles.py (the Dockerfile reader) is absent")
    baked = dockerfiles.final_stage(PROJECT_ROOT / "include" / "docker" / "airflow" / "Dockerfile").env
    env = static_env(load_values())
    for name in ("PYTHONPATH", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER"):
        assert env[name] == baked.get(name), f"{name} differs between the Airflow image and the Helm values"


POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


@pytest.mark.helm
def test_chart_lints_and_renders_valid_restricted_pods() -> None:
    helm, chart = shutil.which("helm"), os.environ.get("MLOPS_AIRFLOW_CHART")
    if not helm or not chart:
        pytest.skip("needs `helm` on PATH and MLOPS_AIRFLOW_CHART (the airflow chart 1.22.0, .tgz or folder)")
    pod_security = pytest.importorskip("tools.pod_security")
    common = ["--namespace", RELEASE_NAMESPACE, "-f", str(VALUES_PATH)]
    lint = subprocess.run([helm, "lint", chart, *common], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [helm, "template", "airflow", chart, *common, "--kube-version", f"{K8S_VERSION}.0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    # KubernetesExecutor worker pods are not objects of the release: the chart ships their template in a ConfigMap.
    for obj in list(objects):
        if obj["kind"] == "ConfigMap" and "pod_template_file.yaml" in obj.get("data", {}):
            objects.append(yaml.safe_load(obj["data"]["pod_template_file.yaml"]))
    # The effective RBAC of the release: no Role of the chart grants exec (allowPodLaunching is off).
    exec_roles = [
        o["metadata"]["name"]
        for o in objects
        if o["kind"] in {"Role", "ClusterRole"}
        for rule in o.get("rules", [])
        if {"pods/exec", "pods/attach", "pods/*", "*"} & set(rule.get("resources", []))
    ]
    assert exec_roles == [], f"chart Roles that grant exec: {exec_roles}"
    bare = subprocess.run(
        [helm, "template", "airflow", chart, *common, "--set", "images.airflow.repository=airflow-tf-lifecycle"],
        capture_output=True,
        text=True,
    )
    assert bare.returncode != 0 and "must include its registry path" in bare.stderr, bare.stderr
    baseline_only, broken, worker_pods = [], [], []
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if obj["kind"] not in POD_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata'].get('name')}"
        if pod_security.baseline_violations(obj):
            broken.append(name)
        elif pod_security.restricted_violations(obj):
            baseline_only.append(f"{name}: {pod_security.restricted_violations(obj)}")
        if obj["kind"] == "Pod":
            worker_pods.append(obj)
    assert broken == [], f"chart pods that do not even meet baseline: {broken}"
    assert baseline_only == [], "chart pods that reach only baseline:\n" + "\n".join(baseline_only)
    (worker,) = worker_pods
    assert worker["spec"]["serviceAccountName"] == lookup(load_values(), "workers.kubernetes.serviceAccount.name")
    env = {e["name"]: e.get("value") for c in worker["spec"]["containers"] for e in c.get("env", [])}
    assert env["MLOPS_TRAINER_IMAGE"] == templated_env(load_values())["MLOPS_TRAINER_IMAGE"]
