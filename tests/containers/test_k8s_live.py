"""The kubernetes backend on a real cluster (kind), and the kind cluster config it needs, checked offline.

The live tests (marker ``k8s``) run only where a kubeconfig is present, and skip only for that reason;
every other missing piece (kubectl, the share, the model server, the trainer image on the node) fails with
what to do.  The whole setup, step by step, is in docs/backends.md ("Trying it on kind"):

    sudo install -d -o 1000 -g 1000 -m 2775 /mnt/mlops-artifacts
    kind create cluster --config include/k8s/overlays/kind/kind-cluster.yaml
    kind load docker-image mlops-trainer:local
    kubectl apply -k include/k8s/overlays/kind && kubectl apply -k include/k8s/serving
    .venv/bin/python -m pytest -m k8s tests/containers/test_k8s_live.py

This test process stands in for an Airflow worker: it runs the DAG with ``dag.test()`` and reads the step
results from the host folder that kind-cluster.yaml mounts into the node, at the same path as the pods.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from airflow.sdk import DAG
from dag_runner import LIFECYCLE_STEP_TASKS, run_lifecycle
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed
from tooling import require_executable

from include.mlops.artifacts import registry_root
from include.mlops.registry.filesystem import CONFIG_FILE, Registry
from mlops_airflow import step_pods

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KIND_OVERLAY = PROJECT_ROOT / "include" / "k8s" / "overlays" / "kind"
KIND_CLUSTER_CONFIG = KIND_OVERLAY / "kind-cluster.yaml"
# The share as the worker (this process) and the pods see it: kind-cluster.yaml mounts it into the node.
SHARE = Path(step_pods.DEFAULT_ARTIFACT_ROOT)
SHARE_GID = step_pods.STEP_GID
STEPS_NAMESPACE = step_pods.DEFAULT_NAMESPACE
MODEL_SERVER = "mlops-model-server"
MODEL_SERVER_URL = f"http://{MODEL_SERVER}.{STEPS_NAMESPACE}.svc.cluster.local:8501"
DAG_ID = "lifecycle__diabetes"
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
FAST = {"epochs": 8, "batch_size": 64}
STEP_TASKS = LIFECYCLE_STEP_TASKS
SETUP_DOC = 'docs/backends.md, "Trying it on kind"'


def kubeconfig() -> Path | None:
    """The first kubeconfig file that exists: ``$KUBECONFIG`` (a path list, as kubectl reads it), else ~/.kube/config."""
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    for candidate in [Path(p) for p in listed] or [Path.home() / ".kube" / "config"]:
        if candidate.is_file():
            return candidate
    return None


needs_kubeconfig = pytest.mark.skipif(
    kubeconfig() is None, reason="no kubeconfig (KUBECONFIG or ~/.kube/config): no cluster to run on"
)


def kubectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS``; a missing kubectl fails the test, since a kubeconfig says a cluster is meant to be here."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not on PATH; install it (https://kubernetes.io/docs/tasks/tools/)", pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)


def require_share() -> None:
    """The kind share is on this host at the pods' path, writable, and prepared by the prepare-share Job."""
    if not SHARE.is_dir():
        pytest.fail(
            f"{SHARE} does not exist on this host. Create it (sudo install -d -o 1000 -g 1000 -m 2775 {SHARE}) and "
            f"create the kind cluster with {KIND_CLUSTER_CONFIG.relative_to(PROJECT_ROOT)}, which mounts it into "
            f"the node; see {SETUP_DOC}.",
            pytrace=False,
        )
    probe = SHARE / f".k8s-live-write-check-{uuid.uuid4().hex}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        pytest.fail(
            f"{SHARE} is not writable by this process (uid {os.getuid()}): {exc}. Run `sudo chown 1000:1000 {SHARE} "
            f"&& sudo chmod 2775 {SHARE}` and run the tests as a member of group {SHARE_GID}.",
            pytrace=False,
        )
    # The pods create runs/ and models/ entries as 1000:1000 mode 2775; the worker writes into them through
    # the shared group (the contract's one UID/GID policy), as the Helm values give the chart's pods.
    if os.getuid() not in (0, step_pods.STEP_UID) and SHARE_GID not in (os.getgid(), *os.getgroups()):
        pytest.fail(
            f"this process (uid {os.getuid()}, groups {sorted({os.getgid(), *os.getgroups()})}) is not in group "
            f"{SHARE_GID}, the share's group, so it cannot write into the folders the step pods create. Add your "
            f"user to a group with GID {SHARE_GID} and log in again (or run as uid {step_pods.STEP_UID}).",
            pytrace=False,
        )
    models_config = registry_root(SHARE) / CONFIG_FILE
    if not models_config.is_file():
        pytest.fail(
            f"{models_config} does not exist. Either the prepare-share Job has not finished (`kubectl -n "
            f"{STEPS_NAMESPACE} wait --for=condition=complete job/mlops-prepare-share --timeout=300s`), or the "
            f"cluster was not created with {KIND_CLUSTER_CONFIG.relative_to(PROJECT_ROOT)}, so the node's share "
            f"is not this host's {SHARE}; see {SETUP_DOC}.",
            pytrace=False,
        )


def require_model_server() -> None:
    """Deployment ``mlops-model-server`` exists in ``mlops-steps`` and has a ready replica."""
    found = kubectl("-n", STEPS_NAMESPACE, "get", "deployment", MODEL_SERVER, "-o", "json")
    if found.returncode != 0:
        pytest.fail(
            f"kubectl cannot see deployment {MODEL_SERVER} in namespace {STEPS_NAMESPACE}: {found.stderr.strip()}. "
            f"Apply the model server with `kubectl apply -k include/k8s/serving` (after the kind overlay); "
            f"see {SETUP_DOC}.",
            pytrace=False,
        )
    status = json.loads(found.stdout).get("status", {})
    if not status.get("availableReplicas"):
        pytest.fail(
            f"deployment {MODEL_SERVER} in {STEPS_NAMESPACE} has no available replica ({status.get('conditions')}). "
            f"Wait with `kubectl -n {STEPS_NAMESPACE} rollout status deployment/{MODEL_SERVER}`; if its pod cannot "
            "pull tensorflow/serving, use include/k8s/serving/overlays/project-server with the server image "
            f"loaded by `kind load docker-image`; see {SETUP_DOC}.",
            pytrace=False,
        )


def require_image_on_a_node(image: str) -> None:
    """A bare local image name (no registry) can only come from ``kind load``: it must be on a node already."""
    if "/" in image:
        return  # a registry image: the kubelet pulls it
    nodes = kubectl("get", "nodes", "-o", "json")
    assert nodes.returncode == 0, f"kubectl get nodes failed: {nodes.stderr.strip()}"
    on_nodes = {
        name
        for node in json.loads(nodes.stdout)["items"]
        for entry in node.get("status", {}).get("images", [])
        for name in entry.get("names", [])
    }
    if image not in on_nodes and f"docker.io/library/{image}" not in on_nodes:
        pytest.fail(
            f"image {image!r} is not on any node, and a name without a registry cannot be pulled: build it "
            f"(docs/backends.md) and run `kind load docker-image {image}`, or set MLOPS_TRAINER_IMAGE to an image "
            "in a registry the cluster can pull from.",
            pytrace=False,
        )


@pytest.fixture
def kind_share(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's environment on kind: the share at the pods' path, the trainer image, the checks first."""
    from mlops_airflow.container_steps import DEFAULT_IMAGE, IMAGE_ENV

    require_share()
    image = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    require_image_on_a_node(image)
    monkeypatch.setenv(IMAGE_ENV, image)
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(SHARE))
    monkeypatch.setenv(step_pods.ARTIFACT_ROOT_ENV, str(SHARE))
    monkeypatch.delenv(step_pods.NAMESPACE_ENV, raising=False)
    return SHARE


@pytest.mark.k8s
@needs_kubeconfig
@pytest.mark.usefixtures("kind_share")
def test_snapshot_step_runs_as_a_pod_and_returns_its_result() -> None:
    from mlops_airflow.container_operators import KubernetesStepOperator

    with DAG(dag_id="k8s_live_test", schedule=None):
        task = KubernetesStepOperator(
            task_id="snapshot",
            step="snapshot",
            model="diabetes",
            step_arguments={"interval_start": "2026-11-19T00:00:00+00:00", "interval_end": "2026-11-20T00:00:00+00:00"},
            deferrable=False,
            startup_timeout_seconds=300,
            schedule_timeout_seconds=300,
        )
    pushed: dict[str, object] = {}
    ti = SimpleNamespace(
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
        dag_id="k8s_live_test",
        task_id="snapshot",
        map_index=-1,
        try_number=1,
        run_id="manual__k8s",
    )
    context = {"ti": ti, "task_instance": ti, "dag_run": SimpleNamespace(run_id="manual__k8s"), "run_id": "manual__k8s"}
    result = task.execute(context)
    assert result["rows"] > 0 and len(result["sha256"]) == 64
    assert Path(result["data_uri"]).is_relative_to(SHARE) and Path(result["data_uri"]).is_file()
    assert pushed["pod_namespace"] == STEPS_NAMESPACE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def port_forward(service: str, remote_port: int, log_path: Path) -> Iterator[str]:
    """``kubectl port-forward svc/SERVICE`` on a free local port: its base URL; the process ends on exit."""
    port = free_port()
    binary = shutil.which("kubectl")
    assert binary is not None, "kubectl is not on PATH"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [binary, "-n", STEPS_NAMESPACE, "port-forward", f"svc/{service}", f"{port}:{remote_port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for attempt in Retrying(
            stop=stop_after_delay(30),
            wait=wait_fixed(0.5),
            retry=retry_if_exception_type(httpx.TransportError),
            reraise=True,
        ):
            with attempt:
                assert process.poll() is None, (
                    f"kubectl port-forward svc/{service} exited with {process.returncode}: {log_path.read_text()}"
                )
                httpx.get(f"{url}/v1/models/diabetes", timeout=5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def expected_predictions(model_dir: Path, rows: list[list[float]]) -> list[float]:
    """What the registered SavedModel itself answers for ``rows`` (the contract's serving_default signature)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    outputs = signature(inputs=tf.constant(rows, dtype=tf.float32))["outputs"]
    return [float(value) for value in outputs.numpy().reshape(len(rows))]


@pytest.mark.k8s
@pytest.mark.slow
@needs_kubeconfig
@pytest.mark.usefixtures("airflow_db")
def test_lifecycle_runs_its_steps_as_pods_and_tf_serving_serves_the_deployed_version(
    kind_share: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from include.mlops.config import find_model_config

    require_model_server()
    registry = Registry(registry_root(kind_share))
    if registry.versions("diabetes"):
        pytest.fail(
            f"{registry.root / 'diabetes'} already holds versions {registry.versions('diabetes')} (an earlier run); "
            "this test registers and serves version 1 of a fresh share. Reset it with `rm -rf "
            f"{registry.root / 'diabetes'} {kind_share / 'runs' / DAG_ID}` and `printf 'model_config_list {{\\n}}\\n' "
            f"> {registry.root / CONFIG_FILE}`, or recreate the cluster and the share.",
            pytrace=False,
        )
    monkeypatch.setenv("MLOPS_BACKEND", "kubernetes")
    # The deploy step runs in a pod of mlops-steps and verifies the new version through the Service.
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER_DEFAULT", MODEL_SERVER_URL)

    run = run_lifecycle(DAG_ID, DAY, FAST)

    assert run["state"] == "success", run["states"]
    for task_id in ("snapshot", "validate", "train", "evaluate", "gate", "register", "deploy"):
        assert run["states"][task_id] == "success", (task_id, run["states"])
    assert {task_id: run["tasks"][task_id] for task_id in STEP_TASKS} == dict.fromkeys(
        STEP_TASKS, "KubernetesStepOperator"
    )
    snapshot = run["xcoms"]["snapshot"]
    assert Path(snapshot["data_uri"]).is_relative_to(kind_share) and Path(snapshot["data_uri"]).exists()
    assert run["xcoms"]["deploy"]["verified"] is True, run["xcoms"]["deploy"]
    assert run["xcoms"]["deploy"]["server_url"] == MODEL_SERVER_URL
    assert registry.versions("diabetes") == [1]
    assert registry.label_version("diabetes", "stable") == 1

    features = list(find_model_config("diabetes").features)
    rows = pd.read_parquet(snapshot["data_uri"])[features].head(2).astype("float32").values.tolist()
    expected = expected_predictions(registry.version_dir("diabetes", 1), rows)
    with port_forward(MODEL_SERVER, 8501, tmp_path / "port-forward.log") as url:
        status = httpx.get(f"{url}/v1/models/diabetes", timeout=10)
        assert status.status_code == 200, status.text
        versions = {v["version"]: v["state"] for v in status.json()["model_version_status"]}
        assert versions.get("1") == "AVAILABLE", versions
        predicted = httpx.post(f"{url}/v1/models/diabetes:predict", json={"instances": rows}, timeout=30)
    assert predicted.status_code == 200, predicted.text
    predictions = [float(p[0]) if isinstance(p, list) else float(p) for p in predicted.json()["predictions"]]
    assert len(predictions) == 2
    # TF Serving answers with the very SavedModel that was registered and gated.
    for served, own in zip(predictions, expected, strict=True):
        assert math.isclose(served, own, rel_tol=1e-4, abs_tol=1e-3), (predictions, expected)


# --------------------------------------------------------------------------- offline: the kind cluster config


def kind_overlay_objects() -> list[dict[str, Any]]:
    kubectl_path = require_executable("kubectl", "the kind overlay is rendered with `kubectl kustomize`")
    rendered = subprocess.run(
        [kubectl_path, "kustomize", str(KIND_OVERLAY)], capture_output=True, text=True, timeout=60, check=True
    )
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_kind_cluster_mounts_the_host_share_where_the_overlay_volumes_point() -> None:
    config = yaml.safe_load(KIND_CLUSTER_CONFIG.read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    volumes = [o for o in kind_overlay_objects() if o["kind"] == "PersistentVolume"]
    node_paths = {pv["spec"]["hostPath"]["path"] for pv in volumes}
    assert len(volumes) == 2 and len(node_paths) == 1, node_paths
    # Every node (pods may land on any) mounts the host folder that the worker uses, at the PVs' node path.
    assert config["nodes"], "kind-cluster.yaml has no nodes"
    for node in config["nodes"]:
        mounts = {(m["hostPath"], m["containerPath"]) for m in node.get("extraMounts", [])}
        assert (str(SHARE), *node_paths) in mounts, (node["role"], mounts)


def test_kind_overlay_runs_the_trainer_image_that_kind_loads() -> None:
    from mlops_airflow.container_steps import DEFAULT_IMAGE

    jobs = {o["metadata"]["name"]: o for o in kind_overlay_objects() if o["kind"] == "Job"}
    (container,) = jobs["mlops-prepare-share"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == DEFAULT_IMAGE
    assert container["imagePullPolicy"] == "IfNotPresent"
