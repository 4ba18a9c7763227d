"""Naming rules, each in one place: served model names, and the Kubernetes names a model config holds.

A model's ``serving_name`` becomes its TF Serving model folder
(``models/<serving_name>/<version>/``) and the ``name`` of its entry in the
model config file, so the registry (when it writes) and the model configs
(when they are parsed) check the same rule.  Kept free of heavy imports:
the DAG files use it at parse time.
"""

from __future__ import annotations

import re

_SERVING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SERVING_NAME_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit, and not all digits"


def serving_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a TF Serving model folder, or None when it can.

    All-digit names are refused because TF Serving reads all-digit folders as versions.
    """
    if not isinstance(name, str) or not _SERVING_NAME.match(name) or name.isdigit():
        return f"{name!r} is not usable as a TF Serving model folder: use {SERVING_NAME_RULE}"
    return None


# Kubernetes' own rules (apimachinery validation), for the model config's pod placement fields and
# MLOPS_K8S_GPU_NODE_SELECTOR: a name the API server would refuse fails at parse time, naming the field,
# instead of failing every try of the step when its pod is submitted.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def k8s_object_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a RuntimeClass, PriorityClass or Secret (a DNS subdomain), or None."""
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return (
            f"{name!r} is not a Kubernetes object name: use at most 253 lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def k8s_label_problem(key: str, value: str) -> str | None:
    """Why ``key: value`` cannot be a Kubernetes label (or node selector entry), or None."""
    prefix, _, name = key.rpartition("/")
    if (prefix and k8s_object_name_problem(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"{key!r} is not a Kubernetes label key: an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (
            f"{value!r} (for {key!r}) is not a Kubernetes label value: at most 63 letters, digits, '-', '_' and "
            "'.', starting and ending with a letter or digit"
        )
    return None
