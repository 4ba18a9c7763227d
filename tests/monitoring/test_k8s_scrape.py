"""include/k8s/serving: the model server's Service and its ServiceMonitor, rendered by kustomize and checked offline.

kubernetes-validate knows the core kinds only, so the ServiceMonitor (a Prometheus Operator CRD) is
checked for structure: it must select the Service, name one of its ports, and scrape the path that
include/monitoring/monitoring.config makes TF Serving export.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from tooling import require_executable

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"


def rendered(path: str) -> dict[str, dict[str, Any]]:
    kubectl = require_executable("kubectl", "the kustomize tests render include/k8s with `kubectl kustomize`")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "include" / "k8s" / path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}


def test_the_service_monitor_scrapes_tf_servings_metrics_path_through_the_service() -> None:
    # The ServiceMonitor is applied on its own (it needs the Prometheus Operator's CRDs).
    (monitor,) = rendered("serving/monitoring").values()
    service = rendered("serving")["Service"]
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)

    assert monitor["kind"] == "ServiceMonitor" and monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == "mlops-steps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    path = re.search(r'path:\s*"([^"]+)"', (ROOT / "include" / "monitoring" / "monitoring.config").read_text())
    assert path is not None
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in ports and ports[endpoint["port"]] == 8501
    assert endpoint["path"] == path[1]
    # The annotation route (plain Prometheus with Kubernetes service discovery) says the same.
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == path[1]
    assert annotations["prometheus.io/port"] == str(ports[endpoint["port"]])
    assert annotations["prometheus.io/scrape"] == "true"
