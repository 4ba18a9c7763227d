"""include/k8s/serving/canary, offline: two TF Servings behind a weighted Gateway API HTTPRoute.

Rendered with ``kubectl kustomize``; the core objects are validated by tests/containers/test_manifests.py
(Kubernetes 1.33 schema, Pod Security), the HTTPRoute here against the vendored Gateway API CRD (standard
channel) with ``jsonschema``, and the CRD's CEL rules (``x-kubernetes-validations``, which jsonschema does
not evaluate) by their Python equivalents below: a rule this file does not know fails the test, so a newer
CRD cannot pass unread.  A request is then routed through the rendered route as the Gateway API says
(Exact before PathPrefix, backend filters applied) to show what each Deployment receives.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from tooling import require_executable

from include.mlops.serving.post_api import PREDICT_PATH
from include.mlops.serving.request_logger import build_parser
from mlops_airflow.canary_route import (
    CANARY_SERVICE,
    GROUP,
    PLURAL,
    ROUTE_NAME,
    STABLE_SERVICE,
    canary_rule,
    label_path,
    route_weights,
    with_canary_weight,
)

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "include" / "k8s"
CANARY = K8S_DIR / "serving" / "canary"
CRDS = ROOT.parent / "shared" / "vendor" / "crds"
HTTPROUTE_CRD = CRDS / "gateway.networking.k8s.io_httproutes.yaml"
NAME = "app.kubernetes.io/name"
Obj = dict[str, Any]


def kustomize(path: Path) -> list[Obj]:
    kubectl = require_executable("kubectl", "renders include/k8s/serving/canary")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return kustomize(CANARY)


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@cache
def httproute_schema() -> Obj:
    if not HTTPROUTE_CRD.exists():
        pytest.skip(f"the vendored CRD {HTTPROUTE_CRD} is not beside this checkout")
    crd = yaml.safe_load(HTTPROUTE_CRD.read_text())
    assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    return version["schema"]["openAPIV3Schema"]


# --------------------------------------------------------------------------- the CRD's CEL rules, in Python

PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")
FILTER_FIELDS = {
    "CORS": "cors",
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}


def _prefix_rewrite_needs_one_prefix_match(rule: Obj) -> bool:
    filters = [
        *(rule.get("filters") or []),
        *(f for b in rule.get("backendRefs") or [] for f in b.get("filters") or []),
    ]
    uses = any(
        (f.get("urlRewrite") or f.get("requestRedirect") or {}).get("path", {}).get("type") == "ReplacePrefixMatch"
        for f in filters
    )
    matches = rule.get("matches") or []
    return not uses or (len(matches) == 1 and matches[0].get("path", {}).get("type") == "PathPrefix")


def _path_rule(check: Callable[[str], bool]) -> Callable[[Obj], bool]:
    return lambda p: p.get("type") not in ("Exact", "PathPrefix") or check(p["value"])


def _filter_field_rule(message: str) -> Callable[[Obj], bool] | None:
    nil = re.fullmatch(r"filter\.(\w+) must be nil if the filter\.type is not (\w+)", message)
    if nil:
        return lambda f: not (nil[1] in f and f["type"] != nil[2])
    given = re.fullmatch(r"filter\.(\w+) must be specified for (\w+) filter\.type", message)
    if given:
        return lambda f: not (given[1] not in f and f["type"] == given[2])
    repeated = re.fullmatch(r"(\w+) filter cannot be repeated", message)
    if repeated:
        return lambda fs: sum(f["type"] == repeated[1] for f in fs) <= 1
    return None


# Each rule by its message: what it asks of the value at the schema node that carries it.
CEL: dict[str, Callable[[Any], bool]] = {
    "sectionName must be specified when parentRefs includes 2 or more references to the same parent": lambda refs: (
        len({(r.get("kind"), r.get("namespace"), r["name"]) for r in refs}) == len(refs)
        or all("sectionName" in r for r in refs)
    ),
    "sectionName must be unique when parentRefs includes 2 or more references to the same parent": lambda refs: (
        len({(r.get("kind"), r.get("namespace"), r["name"], r.get("sectionName")) for r in refs}) == len(refs)
    ),
    "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route "
    "must be less than 128": lambda rules: sum(len(r.get("matches") or []) for r in rules) <= 128,
    "RequestRedirect filter must not be used together with backendRefs": lambda rule: (
        not rule.get("backendRefs") or not any("requestRedirect" in f for f in rule.get("filters") or [])
    ),
    "When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified": (
        _prefix_rewrite_needs_one_prefix_match
    ),
    "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified": (
        _prefix_rewrite_needs_one_prefix_match
    ),
    "Within backendRefs, when using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix "
    "match must be specified": _prefix_rewrite_needs_one_prefix_match,
    "Within backendRefs, When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match "
    "must be specified": _prefix_rewrite_needs_one_prefix_match,
    "Must have port for Service reference": lambda ref: (
        ref.get("group", "") != "" or ref.get("kind", "Service") != "Service" or "port" in ref
    ),
    "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both": lambda fs: (
        not (any(f["type"] == "RequestRedirect" for f in fs) and any(f["type"] == "URLRewrite" for f in fs))
    ),
    "replaceFullPath must be specified when type is set to 'ReplaceFullPath'": lambda p: (
        p["type"] != "ReplaceFullPath" or "replaceFullPath" in p
    ),
    "type must be 'ReplaceFullPath' when replaceFullPath is set": lambda p: (
        "replaceFullPath" not in p or p["type"] == "ReplaceFullPath"
    ),
    "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'": lambda p: (
        p["type"] != "ReplacePrefixMatch" or "replacePrefixMatch" in p
    ),
    "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set": lambda p: (
        "replacePrefixMatch" not in p or p["type"] == "ReplacePrefixMatch"
    ),
    "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']": _path_rule(
        lambda v: v.startswith("/")
    ),
    **{
        f"must not contain '{bad}' when type one of ['Exact', 'PathPrefix']": _path_rule(
            lambda v, bad=bad: bad not in v
        )
        for bad in ("//", "/./", "/../", "%2f", "%2F", "#")
    },
    **{
        f"must not end with '{end}' when type one of ['Exact', 'PathPrefix']": _path_rule(
            lambda v, end=end: not v.endswith(end)
        )
        for end in ("/..", "/.")
    },
    "type must be one of ['Exact', 'PathPrefix', 'RegularExpression']": lambda p: (
        p.get("type") in ("Exact", "PathPrefix", "RegularExpression")
    ),
    "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types "
    "['Exact', 'PathPrefix']": _path_rule(lambda v: bool(PATH_CHARS.match(v))),
}


def cel_rules(schema: Obj, instance: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """(where, message, value) for every CEL rule on a schema node that ``instance`` has a value at."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield where, rule["message"], instance
    if isinstance(instance, dict):
        for key, value in instance.items():
            if key in schema.get("properties", {}):
                yield from cel_rules(schema["properties"][key], value, f"{where}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            yield from cel_rules(schema["items"], value, f"{where}[{i}]")


def cel_problems(route: Obj) -> list[str]:
    problems = []
    for where, message, value in cel_rules(httproute_schema(), route):
        check = CEL.get(message) or _filter_field_rule(message)
        assert check is not None, f"{where}: a CEL rule of the CRD this test does not evaluate: {message!r}"
        if not check(value):
            problems.append(f"{where}: {message}")
    return problems


@cache
def httproute_validator() -> jsonschema.Validator:
    schema = httproute_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate_httproute(route: Obj) -> None:
    httproute_validator().validate(route)
    assert cel_problems(route) == []


# --------------------------------------------------------------------------- routing a request as a Gateway does


def route_request(route: Obj, path: str) -> list[tuple[str, int, str]]:
    """(Service, weight, path it receives) for each backend of the rule that takes ``path`` (no method/header matches here)."""

    def score(match: Obj) -> tuple[int, int] | None:
        kind, value = match["path"]["type"], match["path"]["value"]
        if kind == "Exact":
            return (2, len(value)) if path == value else None
        prefix = value.rstrip("/")
        if kind == "PathPrefix" and (path == prefix or path.startswith(prefix + "/") or not prefix):
            return (1, len(prefix))
        return None

    scored = [(s, rule) for rule in route["spec"]["rules"] for m in rule["matches"] if (s := score(m)) is not None]
    if not scored:
        return []
    _, rule = max(scored, key=lambda pair: pair[0])
    received = []
    for ref in rule["backendRefs"]:
        sent = path
        for f in ref.get("filters") or []:
            rewrite = f.get("urlRewrite", {}).get("path", {})
            if rewrite.get("type") == "ReplaceFullPath":
                sent = rewrite["replaceFullPath"]
        received.append((ref["name"], ref.get("weight", 1), sent))
    return received


def served_label(path: str) -> str | None:
    """The label a TF Serving REST predict path addresses (the local server's own route pattern)."""
    match = PREDICT_PATH.fullmatch(path)
    return match[3] if match else None


# --------------------------------------------------------------------------- tests


def test_the_route_validates_against_the_gateway_api_crd(objects: list[Obj]) -> None:
    route = one(objects, "HTTPRoute", ROUTE_NAME)
    assert route["apiVersion"] == f"{GROUP}/v1" and route["metadata"]["namespace"] == "mlops-steps"
    validate_httproute(route)
    # The check is not empty: a CEL rule broken on purpose is seen, and so is a schema error.
    broken = yaml.safe_load(yaml.safe_dump(route))
    broken["spec"]["rules"][0]["backendRefs"][1]["filters"][0]["urlRewrite"]["path"]["type"] = "ReplacePrefixMatch"
    assert any("replacePrefixMatch must be specified" in p for p in cel_problems(broken))
    with pytest.raises(jsonschema.ValidationError, match="-1 is less than the minimum of 0"):
        validate_httproute(
            {**route, "spec": {**route["spec"], "rules": [{"backendRefs": [{"name": "x", "weight": -1}]}]}}
        )


def test_the_route_attaches_to_the_documented_gateway_and_splits_each_model(objects: list[Obj]) -> None:
    route = one(objects, "HTTPRoute", ROUTE_NAME)
    (parent,) = route["spec"]["parentRefs"]
    assert parent == {"group": GROUP, "kind": "Gateway", "name": "mlops-gateway", "namespace": "mlops-gateway"}
    *model_rules, rest = route["spec"]["rules"]
    models = sorted(p.stem for p in (ROOT / "include" / "models").glob("*.yaml"))
    assert model_rules == [canary_rule(model) for model in models], "the manifest's rules are canary_rule's"
    assert {route_weights(route, model) for model in models} == {(100, 0)}
    assert rest["backendRefs"] == [{"name": STABLE_SERVICE, "port": 8501}]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            assert ref["port"] in {p["port"] for p in services[ref["name"]]["spec"]["ports"]}


@pytest.mark.parametrize("percent", [0, 10, 100])
def test_a_stable_addressed_prediction_reaches_the_canary_as_a_canary_request(objects: list[Obj], percent: int) -> None:
    route = with_canary_weight(one(objects, "HTTPRoute", ROUTE_NAME), "diabetes", percent)
    validate_httproute(route)
    received = route_request(route, label_path("diabetes", "stable"))
    assert [(svc, weight, served_label(path)) for svc, weight, path in received] == [
        (STABLE_SERVICE, 100 - percent, "stable"),
        (CANARY_SERVICE, percent, "canary"),
    ]
    # Anything else goes to the stable server unchanged, whatever the canary's share.
    for path in (
        "/v1/models/diabetes/labels/stable",
        "/v1/models/diabetes/versions/3:predict",
        "/v1/models/x/labels/stable:predict",
    ):
        assert route_request(route, path) == [(STABLE_SERVICE, 1, path)]
    # A model the manifest does not list gets the same rule when it first goes to canary.
    added = with_canary_weight(route, "new-model_2", 5)
    validate_httproute(added)
    assert route_request(added, label_path("new-model_2", "stable"))[1] == (
        CANARY_SERVICE,
        5,
        label_path("new-model_2", "canary"),
    )


def test_two_deployments_of_the_same_server_that_never_select_each_other(objects: list[Obj]) -> None:
    stable, canary = one(objects, "Deployment", STABLE_SERVICE), one(objects, "Deployment", CANARY_SERVICE)
    pod = copy.deepcopy(stable["spec"]["template"]["spec"])
    canary_pod = copy.deepcopy(canary["spec"]["template"]["spec"])
    logger_container(canary_pod)["args"].remove("--track=canary")  # the one difference (next test)
    assert canary_pod == pod, "the canary must be the stable server (image, args, security)"
    assert "replicas" not in stable["spec"] and canary["spec"]["replicas"] == 1
    stable_pods = stable["spec"]["template"]["metadata"]["labels"]
    canary_pods = canary["spec"]["template"]["metadata"]["labels"]
    assert (stable_pods[NAME], canary_pods[NAME]) == (STABLE_SERVICE, CANARY_SERVICE)

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    for name, pods, other in ((STABLE_SERVICE, stable_pods, canary_pods), (CANARY_SERVICE, canary_pods, stable_pods)):
        deployment, service = one(objects, "Deployment", name), one(objects, "Service", name)
        for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"]):
            assert selects(selector, pods) and not selects(selector, other), name
    # The HPA and the PDB are the stable server's alone: the canary's count is fixed at one.
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == [STABLE_SERVICE]
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], stable_pods)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], canary_pods)


def logger_container(pod: Obj) -> Obj:
    (container,) = [c for c in pod["containers"] if c["name"] == "request-logger"]
    return container


def test_each_request_logger_counts_its_own_track(objects: list[Obj]) -> None:
    """The route series' track of an unlabeled request is the pod's: canary for the canary Deployment only."""
    tracks = {}
    for name in (STABLE_SERVICE, CANARY_SERVICE):
        container = logger_container(one(objects, "Deployment", name)["spec"]["template"]["spec"])
        assert container["command"][-1] == "include.mlops.serving.request_logger"
        tracks[name] = build_parser().parse_args(container["args"]).track
    assert tracks == {STABLE_SERVICE: "stable", CANARY_SERVICE: "canary"}


def test_canary_pods_are_admitted_like_the_stable_ones(objects: list[Obj]) -> None:
    def swapped(policy: Obj) -> str:
        text = yaml.safe_dump(policy["spec"], sort_keys=True)
        return text.replace(f"{NAME}: {STABLE_SERVICE}\n", f"{NAME}: {CANARY_SERVICE}\n")

    base = {o["metadata"]["name"]: o for o in kustomize(K8S_DIR / "base") if o["kind"] == "NetworkPolicy"}
    ours = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    assert set(ours) == {"model-server-canary-ingress", "deploy-step-to-model-server-canary"}
    assert yaml.safe_dump(ours["model-server-canary-ingress"]["spec"], sort_keys=True) == swapped(
        base["model-server-ingress"]
    )
    assert yaml.safe_dump(ours["deploy-step-to-model-server-canary"]["spec"], sort_keys=True) == swapped(
        base["deploy-step-to-model-server"]
    )


def test_the_worker_may_change_this_route_only(objects: list[Obj]) -> None:
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "mlops-steps"
    assert role["rules"] == [
        {
            "apiGroups": [GROUP],
            "resources": [PLURAL],
            "resourceNames": [ROUTE_NAME],
            "verbs": ["get", "update", "patch"],
        }
    ]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-airflow-worker", "namespace": "mlops"}]


def test_the_documented_gateway_patch_renders_a_valid_route(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "production.md").read_text()
    section = doc.split("## Canary on Kubernetes", 1)[1].split("\n## ", 1)[0]
    overlay = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    overlay["resources"] = [os.path.relpath(CANARY, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    route = one(kustomize(tmp_path), "HTTPRoute", ROUTE_NAME)
    assert route["spec"]["parentRefs"][0]["name"] == "public" and route["spec"]["parentRefs"][0]["namespace"] == "edge"
    validate_httproute(route)
