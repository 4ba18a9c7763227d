"""The canary's traffic share on Kubernetes: the weights of the model server's Gateway API HTTPRoute.

``include/k8s/serving/canary`` runs TF Serving twice (Deployments ``mlops-model-server`` and
``mlops-model-server-canary``, both over the same ``models.config``) behind the HTTPRoute
``mlops-model-server``.  Each model under canary has its own rule there: an Exact match on
``/v1/models/<name>/labels/stable:predict`` with two backendRefs, the stable Service (weight ``100 - p``)
and the canary Service (weight ``p``), whose URLRewrite filter turns the path into
``.../labels/canary:predict`` so that the canary server answers with the version labelled ``canary``.

:func:`set_canary_weight` sets ``p`` for one model through the cncf-kubernetes provider's
:class:`KubernetesHook` (its API client's ``CustomObjectsApi``): it reads the route, changes the model's
rule (or adds it, built by :func:`canary_rule` exactly as the manifest writes it), replaces the route with
the ``resourceVersion`` it read (a concurrent change makes it read again instead of overwriting), and reads
it back to check that the weights are what was asked.  The Airflow worker's identity may do this through
``include/k8s/serving/canary/rbac.yaml``.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from mlops_airflow import step_pods

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

log = logging.getLogger(__name__)

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"
ROUTE_NAME = "mlops-model-server"
STABLE_SERVICE = "mlops-model-server"
CANARY_SERVICE = "mlops-model-server-canary"
SERVICE_PORT = 8501
STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
# The Gateway API's limit on rules per HTTPRoute (the CRD's maxItems).
MAX_RULES = 16
WRITE_ATTEMPTS = 5
APPLY_HINT = "kubectl apply -k include/k8s/serving/canary (docs/production.md, 'Canary on Kubernetes')"


class CanaryRouteError(AirflowException):
    """The route cannot carry the asked weights: missing CRD or route, no permission, a foreign rule, a lost write."""


def label_path(model: str, label: str) -> str:
    """The REST path of a prediction addressed to ``model``'s ``label``, as clients send it."""
    return f"/v1/models/{model}/labels/{label}:predict"


def _weights(percent: int) -> tuple[int, int]:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"the canary's share is a whole percentage from 0 to 100, not {percent!r}")
    return 100 - percent, percent


def canary_rule(model: str, percent: int = 0) -> dict[str, Any]:
    """The route rule that splits ``model``'s stable-addressed predictions: the manifest's rules are this."""
    stable, canary = _weights(percent)
    return {
        "matches": [{"path": {"type": "Exact", "value": label_path(model, STABLE_LABEL)}}],
        "backendRefs": [
            {"name": STABLE_SERVICE, "port": SERVICE_PORT, "weight": stable},
            {
                "name": CANARY_SERVICE,
                "port": SERVICE_PORT,
                "weight": canary,
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {
                            "path": {"type": "ReplaceFullPath", "replaceFullPath": label_path(model, CANARY_LABEL)}
                        },
                    }
                ],
            },
        ],
    }


def _is_rule_of(rule: dict[str, Any], model: str) -> bool:
    wanted = {"type": "Exact", "value": label_path(model, STABLE_LABEL)}
    return any(match.get("path") == wanted for match in rule.get("matches") or [])


def _backend(rule: dict[str, Any], service: str) -> dict[str, Any] | None:
    found = [
        ref
        for ref in rule.get("backendRefs") or []
        if ref.get("name") == service and ref.get("kind", "Service") == "Service"
    ]
    return found[0] if len(found) == 1 else None


def _rule_problem(rule: dict[str, Any], model: str) -> str | None:
    """Why ``rule`` is not one this module may reweight (it would not send canary traffic where it should)."""
    stable, canary = _backend(rule, STABLE_SERVICE), _backend(rule, CANARY_SERVICE)
    if stable is None or canary is None or len(rule["backendRefs"]) != 2:
        return f"it should have exactly two backendRefs, Services {STABLE_SERVICE} and {CANARY_SERVICE}"
    if len(rule.get("matches") or []) != 1:
        return "it should match only the stable label's predict path"
    rewrites = [
        f.get("urlRewrite", {}).get("path") for f in canary.get("filters") or [] if f.get("type") == "URLRewrite"
    ]
    if rewrites != [{"type": "ReplaceFullPath", "replaceFullPath": label_path(model, CANARY_LABEL)}]:
        return f"its {CANARY_SERVICE} backendRef must rewrite the path to {label_path(model, CANARY_LABEL)}"
    return None


def route_weights(route: dict[str, Any], model: str) -> tuple[int, int] | None:
    """(stable, canary) weights of ``model``'s rule in ``route``, or None when the route has no rule for it."""
    rules = [rule for rule in route.get("spec", {}).get("rules") or [] if _is_rule_of(rule, model)]
    if not rules:
        return None
    if len(rules) > 1:
        raise CanaryRouteError(f"HTTPRoute {_where(route)} has {len(rules)} rules for model {model!r}; keep one")
    problem = _rule_problem(rules[0], model)
    if problem is not None:
        raise CanaryRouteError(
            f"HTTPRoute {_where(route)}: the rule of model {model!r} is not a canary rule: {problem}"
        )
    # An omitted weight is 1 (the Gateway API default).
    return tuple(int(_backend(rules[0], s).get("weight", 1)) for s in (STABLE_SERVICE, CANARY_SERVICE))  # type: ignore[union-attr,return-value]


def with_canary_weight(route: dict[str, Any], model: str, percent: int) -> dict[str, Any]:
    """A copy of ``route`` whose rule for ``model`` gives the canary ``percent`` (added first when missing)."""
    stable, canary = _weights(percent)
    new = copy.deepcopy(route)
    rules = new.setdefault("spec", {}).setdefault("rules", [])
    if route_weights(route, model) is None:
        if len(rules) >= MAX_RULES:
            raise CanaryRouteError(
                f"HTTPRoute {_where(route)} has {len(rules)} rules, the Gateway API's most: no room for model {model!r}"
            )
        # First, so that it reads as the manifest does (the catch-all rule last); Exact beats PathPrefix anyway.
        rules.insert(0, canary_rule(model, percent))
        return new
    rule = next(rule for rule in rules if _is_rule_of(rule, model))
    _backend(rule, STABLE_SERVICE)["weight"] = stable  # type: ignore[index]
    _backend(rule, CANARY_SERVICE)["weight"] = canary  # type: ignore[index]
    return new


def _where(route: dict[str, Any]) -> str:
    meta = route.get("metadata", {})
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _status_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


def _api(hook: KubernetesHook | None, conn_id: str | None) -> CustomObjectsApi:
    if hook is None:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        hook = KubernetesHook(conn_id=conn_id) if conn_id else KubernetesHook()
    return CustomObjectsApi(hook.api_client)


def _crd_installed(api: CustomObjectsApi) -> bool:
    try:
        resources = api.get_api_resources(GROUP, VERSION)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(resource.name == PLURAL for resource in resources.resources or [])


def _read(api: CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            if not _crd_installed(api):
                raise CanaryRouteError(
                    f"the cluster has no Gateway API HTTPRoute ({GROUP}/{VERSION} {PLURAL}): install the Gateway "
                    f"API CRDs (standard channel) and a Gateway implementation, then {APPLY_HINT}"
                ) from error
            raise CanaryRouteError(f"no HTTPRoute {namespace}/{name}: {APPLY_HINT}") from error
        if error.status == 403:
            raise CanaryRouteError(
                f"not allowed to read HTTPRoute {namespace}/{name} ({_status_message(error)}): the worker's "
                "service account needs include/k8s/serving/canary/rbac.yaml"
            ) from error
        raise


def set_canary_weight(
    model: str,
    percent: int,
    *,
    route: str = ROUTE_NAME,
    namespace: str | None = None,
    hook: KubernetesHook | None = None,
    conn_id: str | None = None,
    api: CustomObjectsApi | None = None,
) -> dict[str, int]:
    """Send ``percent`` of ``model``'s stable-addressed predictions to the canary Deployment, the rest to stable.

    ``namespace`` defaults to the model server's (``$MLOPS_K8S_NAMESPACE``, ``mlops-steps``).  The cluster is
    reached through ``api``, else ``hook``, else a ``KubernetesHook`` on Connection ``conn_id`` (the provider's
    default, ``kubernetes_default``, falls back to the pod's in-cluster identity).  Returns the weights read
    back, ``{"stable": 100 - percent, "canary": percent}``; raises :class:`CanaryRouteError` when the route or
    its CRD is missing, the identity may not change it, the model's rule is not a canary rule, or the route
    read back does not carry the asked weights (an admission webhook or another writer changed them).
    """
    stable, canary = _weights(percent)
    namespace = namespace or step_pods.namespace()
    api = api or _api(hook, conn_id)
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        current = _read(api, namespace, route)
        if route_weights(current, model) == (stable, canary):
            break
        if percent == 0 and route_weights(current, model) is None:
            break  # no rule: nothing of this model goes to the canary already
        changed = with_canary_weight(current, model, percent)
        try:
            # A replace with the resourceVersion read: a route changed since fails with 409, and is read again.
            api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, route, changed)
            break
        except ApiException as error:
            if error.status == 409 and attempt < WRITE_ATTEMPTS:
                log.info(
                    "HTTPRoute %s/%s changed while being updated (try %d); reading it again", namespace, route, attempt
                )
                continue
            if error.status == 403:
                raise CanaryRouteError(
                    f"not allowed to update HTTPRoute {namespace}/{route} ({_status_message(error)}): the worker's "
                    "service account needs include/k8s/serving/canary/rbac.yaml"
                ) from error
            if error.status == 422:
                raise CanaryRouteError(
                    f"the API server refused the weights for model {model!r} on HTTPRoute {namespace}/{route}: "
                    f"{_status_message(error)}"
                ) from error
            raise
    read_back = route_weights(_read(api, namespace, route), model) or (100, 0)
    if read_back != (stable, canary):
        raise CanaryRouteError(
            f"HTTPRoute {namespace}/{route} reads back stable {read_back[0]} / canary {read_back[1]} for model "
            f"{model!r} after setting {stable} / {canary}: something else changes its weights"
        )
    log.info("HTTPRoute %s/%s: model %s, stable %d%%, canary %d%%", namespace, route, model, stable, canary)
    return {"stable": stable, "canary": canary}
