"""include/k8s/serving: the model server's Service and its ServiceMonitor, rendered by kustomize and checked offline.

kubernetes-validate knows the core kinds only, so the ServiceMonitor (a Prometheus Operator CRD) is
checked against the vendored CRD's schema and for structure: it must select the Service of each track
(stable, and the canary's of serving/canary), name one of its ports, and scrape the path that
include/monitoring/monitoring.config makes TF Serving export.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from tooling import require_executable

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"
SERVICE_MONITOR_CRD = ROOT.parent / "shared" / "vendor" / "crds" / "monitoring.coreos.com_servicemonitors.yaml"


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
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
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


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    operators = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, _: key in labels,
        "DoesNotExist": lambda key, _: key not in labels,
    }
    return all(operators[e["operator"]](e["key"], e.get("values", [])) for e in selector.get("matchExpressions", []))


def test_the_service_monitor_scrapes_both_tracks_and_is_a_valid_service_monitor() -> None:
    """Stable and canary Services are both scraped (the canary analysis sums each track's series), nothing else."""
    (monitor,) = rendered("serving/monitoring").values()
    if not SERVICE_MONITOR_CRD.exists():
        pytest.skip(f"the vendored CRD {SERVICE_MONITOR_CRD} is not beside this checkout")
    crd = yaml.safe_load(SERVICE_MONITOR_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    jsonschema.validate(monitor, version["schema"]["openAPIV3Schema"])
    kubectl = require_executable("kubectl", "renders serving/canary")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "include" / "k8s" / "serving" / "canary")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    services = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d and d["kind"] == "Service"}
    assert set(services) == {"mlops-model-server", "mlops-model-server-canary"}
    (endpoint,) = monitor["spec"]["endpoints"]
    for name, service in services.items():
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"]), name
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, name
        # The annotation route scrapes both too, and the target labels a labelmap of the Service's labels
        # derives (Kubernetes SD's __meta_kubernetes_service_label_<sanitized key>: mlops_track) are not `track`.
        assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        assert "track" not in {re.sub(r"[^a-zA-Z0-9_]", "_", key) for key in service["metadata"]["labels"]}
    assert not selects(monitor["spec"]["selector"], {"app.kubernetes.io/name": "mlops-airflow"})
    # The Operator's own target labels never clash with the series' `track` either.
    assert "targetLabels" not in endpoint and "podTargetLabels" not in monitor["spec"]
    assert not any(r.get("targetLabel") == "track" for r in endpoint.get("relabelings", []))
