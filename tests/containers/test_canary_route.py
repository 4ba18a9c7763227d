"""plugins/mlops_airflow/canary_route.py: the canary's weights on the HTTPRoute, offline and (``k8s``) live.

Offline, ``set_canary_weight`` talks through the provider's real ``KubernetesHook`` and the kubernetes
client to a stub API server on loopback (tests/stub_kube_api.py) that holds the route rendered from
include/k8s/serving/canary, keeps a resourceVersion (a replace with an old one gets 409, as from the API
server), and can lack the CRD or the route, refuse the identity, or change the weights behind the writer's
back.  Live, against the cluster of the kubeconfig (skipped without one), with the canary applied.
"""

from __future__ import annotations

import copy
import http.server
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from stub_kube_api import stub_kubeconfig
from test_k8s_live import kubeconfig as live_kubeconfig
from test_k8s_live import kubectl, needs_kubeconfig
from tooling import require_executable

from mlops_airflow.canary_route import (
    GROUP,
    PLURAL,
    ROUTE_NAME,
    CanaryRouteError,
    canary_rule,
    route_weights,
    set_canary_weight,
)

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "mlops-steps"
ROUTE_PATH = f"/apis/{GROUP}/v1/namespaces/{NAMESPACE}/{PLURAL}/{ROUTE_NAME}"
DISCOVERY_PATH = f"/apis/{GROUP}/v1"


def rendered_route() -> dict[str, Any]:
    kubectl_bin = require_executable("kubectl", "renders include/k8s/serving/canary")
    out = subprocess.run(
        [kubectl_bin, "kustomize", str(ROOT / "include" / "k8s" / "serving" / "canary")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (route,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "HTTPRoute"]
    return route


def status(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}
    ).encode()


class StubGatewayApi(http.server.BaseHTTPRequestHandler):
    """One HTTPRoute behind the Gateway API's paths; records 'METHOD path' of each request."""

    route: dict[str, Any] | None = None
    crd = True
    forbid_update = False
    conflicts = 0  # how many replaces get 409 (someone else wrote first)
    tamper: Callable[[dict[str, Any]], None] | None = None  # changes a stored route after a write
    requests: list[str] = []

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        cls = type(self)
        path = self.path.split("?")[0]
        cls.requests.append(f"{self.command} {path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if not cls.crd and path.startswith(f"/apis/{GROUP}/"):
            self._send(404, b"404 page not found\n", "text/plain")
        elif path == DISCOVERY_PATH:
            verbs = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]
            resources = [
                {"name": PLURAL, "singularName": "httproute", "namespaced": True, "kind": "HTTPRoute", "verbs": verbs}
            ]
            listing = {"kind": "APIResourceList", "groupVersion": f"{GROUP}/v1", "resources": resources}
            self._send(200, json.dumps(listing).encode())
        elif path != ROUTE_PATH or cls.route is None:
            self._send(404, status(404, "NotFound", f'httproutes.{GROUP} "{ROUTE_NAME}" not found'))
        elif self.command == "GET":
            self._send(200, json.dumps(cls.route).encode())
        elif self.command == "PUT" and cls.forbid_update:
            self._send(403, status(403, "Forbidden", "cannot update resource httproutes"))
        elif self.command == "PUT":
            current = cls.route["metadata"]["resourceVersion"]
            if cls.conflicts or body["metadata"].get("resourceVersion") != current:
                if cls.conflicts:
                    cls.conflicts -= 1
                    cls.route["metadata"]["resourceVersion"] = str(int(current) + 1)
                self._send(409, status(409, "Conflict", "the object has been modified"))
                return
            body["metadata"]["resourceVersion"] = str(int(current) + 1)
            cls.route = body
            if cls.tamper is not None:
                cls.tamper(cls.route)
            self._send(200, json.dumps(cls.route).encode())
        else:
            self._send(405, status(405, "MethodNotAllowed", self.command))

    do_GET = do_PUT = do_PATCH = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[KubernetesHook]:
    route = copy.deepcopy(rendered_route())
    route["metadata"]["resourceVersion"] = "7"
    StubGatewayApi.route, StubGatewayApi.crd, StubGatewayApi.forbid_update = route, True, False
    StubGatewayApi.conflicts, StubGatewayApi.tamper, StubGatewayApi.requests = 0, None, []
    with stub_kubeconfig(StubGatewayApi, tmp_path) as path:
        yield KubernetesHook(config_file=str(path), in_cluster=False)


def stored() -> dict[str, Any]:
    assert StubGatewayApi.route is not None
    return StubGatewayApi.route


def test_the_weights_move_for_that_model_only_and_are_read_back(hook: KubernetesHook) -> None:
    assert set_canary_weight("diabetes", 10, hook=hook, namespace=NAMESPACE) == {"stable": 90, "canary": 10}
    assert route_weights(stored(), "diabetes") == (90, 10)
    assert route_weights(stored(), "digits") == (100, 0)
    assert StubGatewayApi.requests == [f"GET {ROUTE_PATH}", f"PUT {ROUTE_PATH}", f"GET {ROUTE_PATH}"]
    # Asked again, nothing is written.
    StubGatewayApi.requests = []
    assert set_canary_weight("diabetes", 10, hook=hook, namespace=NAMESPACE) == {"stable": 90, "canary": 10}
    assert [r.split()[0] for r in StubGatewayApi.requests] == ["GET", "GET"]
    set_canary_weight("diabetes", 0, hook=hook, namespace=NAMESPACE)
    assert route_weights(stored(), "diabetes") == (100, 0)


def test_the_namespace_defaults_to_the_model_servers(hook: KubernetesHook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_K8S_NAMESPACE", raising=False)
    set_canary_weight("digits", 100, hook=hook)
    assert route_weights(stored(), "digits") == (0, 100)


def test_a_model_without_a_rule_gets_one_when_it_goes_to_canary(hook: KubernetesHook) -> None:
    set_canary_weight("housing", 0, hook=hook, namespace=NAMESPACE)
    assert [r.split()[0] for r in StubGatewayApi.requests] == ["GET", "GET"], "0% and no rule: nothing to write"
    set_canary_weight("housing", 20, hook=hook, namespace=NAMESPACE)
    assert stored()["spec"]["rules"][0] == canary_rule("housing", 20)
    assert route_weights(stored(), "diabetes") == (100, 0)


def test_a_concurrent_change_is_read_again_not_overwritten(hook: KubernetesHook) -> None:
    StubGatewayApi.conflicts = 2
    set_canary_weight("diabetes", 30, hook=hook, namespace=NAMESPACE)
    assert [r.split()[0] for r in StubGatewayApi.requests] == ["GET", "PUT"] * 3 + ["GET"]
    assert route_weights(stored(), "diabetes") == (70, 30)


def test_weights_changed_behind_the_writer_fail_the_read_back(hook: KubernetesHook) -> None:
    def reset(route: dict[str, Any]) -> None:  # e.g. a GitOps controller re-applying the manifest
        for ref in route["spec"]["rules"][0]["backendRefs"]:
            ref["weight"] = 100 if ref["name"] == "mlops-model-server" else 0

    StubGatewayApi.tamper = reset
    with pytest.raises(CanaryRouteError, match=r"reads back stable 100 / canary 0 .* after setting 50 / 50"):
        set_canary_weight("diabetes", 50, hook=hook, namespace=NAMESPACE)


def test_a_missing_route_says_to_apply_the_canary(hook: KubernetesHook) -> None:
    StubGatewayApi.route = None
    with pytest.raises(
        CanaryRouteError,
        match=r"no HTTPRoute mlops-steps/mlops-model-server: kubectl apply -k include/k8s/serving/canary",
    ):
        set_canary_weight("diabetes", 10, hook=hook, namespace=NAMESPACE)


def test_a_cluster_without_the_gateway_api_says_so(hook: KubernetesHook) -> None:
    StubGatewayApi.crd = False
    with pytest.raises(CanaryRouteError, match=r"no Gateway API HTTPRoute .* install the Gateway API CRDs"):
        set_canary_weight("diabetes", 10, hook=hook, namespace=NAMESPACE)
    assert StubGatewayApi.requests == [f"GET {ROUTE_PATH}", f"GET {DISCOVERY_PATH}"]


def test_an_identity_without_the_role_is_told_which_one(hook: KubernetesHook) -> None:
    StubGatewayApi.forbid_update = True
    with pytest.raises(CanaryRouteError, match=r"not allowed to update .* include/k8s/serving/canary/rbac.yaml"):
        set_canary_weight("diabetes", 10, hook=hook, namespace=NAMESPACE)


def test_a_rule_that_would_not_reach_the_canary_label_is_not_reweighted(hook: KubernetesHook) -> None:
    rule = stored()["spec"]["rules"][0]
    del rule["backendRefs"][1]["filters"]
    with pytest.raises(CanaryRouteError, match="must rewrite the path to /v1/models/diabetes/labels/canary:predict"):
        set_canary_weight("diabetes", 10, hook=hook, namespace=NAMESPACE)
    assert not [r for r in StubGatewayApi.requests if r.startswith("PUT")]


@pytest.mark.parametrize("percent", [-1, 101, 12.5, True, "10"])
def test_the_share_is_a_whole_percentage(percent: Any) -> None:
    with pytest.raises(ValueError, match="whole percentage from 0 to 100"):
        set_canary_weight("diabetes", percent, api=object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- live (k8s marker)


@pytest.mark.k8s
@needs_kubeconfig
def test_live_weights_move_and_come_back() -> None:
    """With include/k8s/serving/canary applied (and the Gateway API CRDs): 25% to the canary, then back to 0."""
    got = kubectl("-n", NAMESPACE, "get", f"{PLURAL}.{GROUP}", ROUTE_NAME, "-o", "json")
    if got.returncode != 0:
        pytest.fail(
            f"no HTTPRoute {NAMESPACE}/{ROUTE_NAME} ({got.stderr.strip()}): install the Gateway API CRDs and "
            "`kubectl apply -k include/k8s/serving/canary` (docs/production.md, 'Canary on Kubernetes')",
            pytrace=False,
        )
    hook = KubernetesHook(config_file=str(live_kubeconfig()), in_cluster=False)
    try:
        assert set_canary_weight("diabetes", 25, hook=hook, namespace=NAMESPACE) == {"stable": 75, "canary": 25}
        route = json.loads(kubectl("-n", NAMESPACE, "get", f"{PLURAL}.{GROUP}", ROUTE_NAME, "-o", "json").stdout)
        assert route_weights(route, "diabetes") == (75, 25)
    finally:
        set_canary_weight("diabetes", 0, hook=hook, namespace=NAMESPACE)
    route = json.loads(kubectl("-n", NAMESPACE, "get", f"{PLURAL}.{GROUP}", ROUTE_NAME, "-o", "json").stdout)
    assert route_weights(route, "diabetes") == (100, 0)
