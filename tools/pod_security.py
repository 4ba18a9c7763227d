"""The Kubernetes Pod Security Standards (policy version v1.33), checked offline, field by field.

``baseline_violations(obj)`` and ``restricted_violations(obj)`` take a Pod, a bare PodSpec, or any
workload with a pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob, PodTemplate) and return one message per violation, naming the container and the field, e.g.
``Deployment/mlops-model-server spec.template.spec.containers[0] "server": securityContext.privileged
is true; must be unset or false [baseline: Privileged Containers]``.  An empty list means the pod would
be admitted by a namespace labelled ``pod-security.kubernetes.io/enforce: <level>`` at ``v1.33``.

The rules follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ and the
pod-security-admission checks as they stand at v1.33, including how the two levels of a security context
combine: a container field overrides the pod field, and for ``runAsNonRoot`` and ``seccompProfile`` an
unset container field is satisfied by the pod-level value.  Pods with ``spec.os.name: windows`` are
exempt from the restricted seccomp, privilege-escalation and capabilities rules, as the standard says.

CLI: ``python -m tools.pod_security [--level restricted|baseline] FILE_OR_DIR...``
reads every ``*.yaml``/``*.yml`` (multi-document) and exits 1 listing the violations, 3 on unreadable
input, 0 when every pod-bearing object passes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

POLICY_VERSION = "v1.33"
LEVELS = ("baseline", "restricted")

# Baseline "Capabilities": what a container may add (the container runtime's default set).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# Baseline "Sysctls": the namespaced, isolated ones (lists of 1.0, 1.27, 1.29 and 1.32 combined).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_RESTRICTED_TYPES = frozenset({"RuntimeDefault", "Localhost"})
# Restricted "Volume Types": the only volume sources allowed.
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

# Where each workload kind keeps its pod template (a path of keys from the object's root).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}


class NotAPodError(ValueError):
    """The object holds no pod spec, so no Pod Security level applies to it."""


@dataclass(frozen=True)
class PodParts:
    """The pod's metadata and spec inside an object, and where the spec sits (for messages)."""

    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    label: str  # "Deployment/name spec.template.spec" or "spec" for a bare PodSpec


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...``, or None where a level is missing or null."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def pod_parts(obj: Mapping[str, Any]) -> PodParts | None:
    """The pod inside ``obj`` (a Pod, a workload with a template, or a bare PodSpec); None if it has none."""
    if not isinstance(obj, Mapping):
        return None
    kind = obj.get("kind")
    name = f"{kind}/{_get(obj, 'metadata', 'name') or '?'}"
    if kind == "Pod":
        return PodParts(obj.get("metadata") or {}, obj.get("spec") or {}, f"{name} spec")
    if kind in TEMPLATE_PATHS:
        path = TEMPLATE_PATHS[kind]
        template = _get(obj, *path)
        if not isinstance(template, Mapping):
            return None
        return PodParts(template.get("metadata") or {}, template.get("spec") or {}, f"{name} {'.'.join(path)}.spec")
    if kind is None and isinstance(obj.get("containers"), list):
        return PodParts({}, obj, "spec")
    return None


def has_pod_spec(obj: Mapping[str, Any]) -> bool:
    return pod_parts(obj) is not None


def _parts_or_raise(obj: Mapping[str, Any]) -> PodParts:
    parts = pod_parts(obj)
    if parts is None:
        kind = obj.get("kind") if isinstance(obj, Mapping) else type(obj).__name__
        raise NotAPodError(
            f"{kind!r} holds no pod spec: pass a Pod, a PodSpec (with 'containers') or a workload with a pod "
            f"template ({', '.join(sorted(TEMPLATE_PATHS))})"
        )
    return parts


def _containers(parts: PodParts) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container of every kind, with its label: ``<spec path>.initContainers[0] "name"``."""
    for field in CONTAINER_LISTS:
        for index, container in enumerate(parts.spec.get(field) or []):
            yield f'{parts.label}.{field}[{index}] "{container.get("name", "?")}"', container


class _Report:
    """Collects messages in one format: where, which field, what is wrong, which control."""

    def __init__(self, level: str) -> None:
        self.level = level
        self.messages: list[str] = []

    def add(self, where: str, field: str, problem: str, control: str) -> None:
        self.messages.append(f"{where}: {field} {problem} [{self.level}: {control}]")


def _baseline(parts: PodParts, report: _Report) -> None:
    spec, pod_sc = parts.spec, parts.spec.get("securityContext") or {}
    where = parts.label
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            report.add(where, field, "is true; must be unset or false", "Host Namespaces")
    if _get(pod_sc, "windowsOptions", "hostProcess"):
        report.add(
            where, "securityContext.windowsOptions.hostProcess", "is true; must be unset or false", "HostProcess"
        )
    for volume in spec.get("volumes") or []:
        if volume.get("hostPath") is not None:
            report.add(
                where,
                f'volumes "{volume.get("name")}".hostPath',
                "is set; hostPath volumes are forbidden",
                "HostPath Volumes",
            )
    _apparmor(where, "securityContext.appArmorProfile.type", _get(pod_sc, "appArmorProfile", "type"), report)
    for key, value in (parts.metadata.get("annotations") or {}).items():
        if (
            key.startswith(APPARMOR_ANNOTATION_PREFIX)
            and value
            and value != "runtime/default"
            and not str(value).startswith("localhost/")
        ):
            report.add(
                where,
                f"metadata.annotations[{key}]",
                f"is {value!r}; must be runtime/default or localhost/*",
                "AppArmor",
            )
    _selinux(where, "securityContext.seLinuxOptions", pod_sc.get("seLinuxOptions"), report)
    if _get(pod_sc, "seccompProfile", "type") == "Unconfined":
        report.add(where, "securityContext.seccompProfile.type", "is Unconfined; must not be", "Seccomp")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            report.add(
                where, "securityContext.sysctls", f"sets {sysctl.get('name')!r}, which is not a safe sysctl", "Sysctls"
            )

    for where, container in _containers(parts):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            report.add(where, "securityContext.privileged", "is true; must be unset or false", "Privileged Containers")
        if _get(sc, "windowsOptions", "hostProcess"):
            report.add(
                where, "securityContext.windowsOptions.hostProcess", "is true; must be unset or false", "HostProcess"
            )
        extra = sorted(set(_get(sc, "capabilities", "add") or []) - BASELINE_CAPABILITIES)
        if extra:
            report.add(
                where, "securityContext.capabilities.add", f"adds {extra}, beyond the default set", "Capabilities"
            )
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                report.add(where, "ports[].hostPort", f"is {port['hostPort']}; must be unset or 0", "Host Ports")
        _apparmor(where, "securityContext.appArmorProfile.type", _get(sc, "appArmorProfile", "type"), report)
        _selinux(where, "securityContext.seLinuxOptions", sc.get("seLinuxOptions"), report)
        if sc.get("procMount") not in (None, "Default"):
            report.add(
                where,
                "securityContext.procMount",
                f"is {sc['procMount']!r}; must be unset or Default",
                "/proc Mount Type",
            )
        if _get(sc, "seccompProfile", "type") == "Unconfined":
            report.add(where, "securityContext.seccompProfile.type", "is Unconfined; must not be", "Seccomp")


def _apparmor(where: str, field: str, value: Any, report: _Report) -> None:
    if value is not None and value not in APPARMOR_TYPES:
        report.add(where, field, f"is {value!r}; must be unset, RuntimeDefault or Localhost", "AppArmor")


def _selinux(where: str, field: str, options: Any, report: _Report) -> None:
    if not options:
        return
    if options.get("type") not in (None, *SELINUX_TYPES):
        report.add(
            where, f"{field}.type", f"is {options['type']!r}; must be one of {sorted(SELINUX_TYPES - {''})}", "SELinux"
        )
    for key in ("user", "role"):
        if options.get(key):
            report.add(where, f"{field}.{key}", f"is {options[key]!r}; must be unset", "SELinux")


def _restricted(parts: PodParts, report: _Report) -> None:
    spec, pod_sc = parts.spec, parts.spec.get("securityContext") or {}
    where = parts.label
    windows = _get(spec, "os", "name") == "windows"
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        # hostPath is the baseline's finding already; one message per problem.
        if kinds - RESTRICTED_VOLUME_TYPES - {"hostPath"}:
            report.add(
                where,
                f'volumes "{volume.get("name")}"',
                f"is of type {sorted(kinds)}; allowed: {sorted(RESTRICTED_VOLUME_TYPES)}",
                "Volume Types",
            )
    pod_non_root = pod_sc.get("runAsNonRoot")
    if pod_non_root is False:
        report.add(
            where,
            "securityContext.runAsNonRoot",
            "is false; must be true (or unset with true on every container)",
            "Running as Non-root",
        )
    if pod_sc.get("runAsUser") == 0:
        report.add(where, "securityContext.runAsUser", "is 0; must be a non-zero UID", "Running as Non-root user")
    pod_seccomp = _get(pod_sc, "seccompProfile", "type")
    if not windows and pod_seccomp is not None and pod_seccomp not in SECCOMP_RESTRICTED_TYPES | {"Unconfined"}:
        report.add(
            where,
            "securityContext.seccompProfile.type",
            f"is {pod_seccomp!r}; must be RuntimeDefault or Localhost",
            "Seccomp",
        )

    for where, container in _containers(parts):
        sc = container.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot")
        if non_root is False:
            report.add(where, "securityContext.runAsNonRoot", "is false; must be true", "Running as Non-root")
        elif non_root is None and pod_non_root is not True:
            report.add(
                where,
                "securityContext.runAsNonRoot",
                "is unset and the pod does not set it; must be true",
                "Running as Non-root",
            )
        if sc.get("runAsUser") == 0:
            report.add(where, "securityContext.runAsUser", "is 0; must be a non-zero UID", "Running as Non-root user")
        if windows:
            continue
        if sc.get("allowPrivilegeEscalation") is not False:
            report.add(where, "securityContext.allowPrivilegeEscalation", "must be false", "Privilege Escalation")
        seccomp = _get(sc, "seccompProfile", "type")
        if seccomp is None and pod_seccomp not in SECCOMP_RESTRICTED_TYPES:
            report.add(
                where,
                "securityContext.seccompProfile.type",
                "is unset and the pod sets no RuntimeDefault/Localhost profile",
                "Seccomp",
            )
        elif seccomp is not None and seccomp not in SECCOMP_RESTRICTED_TYPES | {"Unconfined"}:
            report.add(
                where,
                "securityContext.seccompProfile.type",
                f"is {seccomp!r}; must be RuntimeDefault or Localhost",
                "Seccomp",
            )
        if "ALL" not in (_get(sc, "capabilities", "drop") or []):
            report.add(where, "securityContext.capabilities.drop", "must include ALL", "Capabilities")
        added = sorted(set(_get(sc, "capabilities", "add") or []) - {"NET_BIND_SERVICE"})
        if added:
            report.add(
                where,
                "securityContext.capabilities.add",
                f"adds {added}; only NET_BIND_SERVICE is allowed",
                "Capabilities",
            )


def baseline_violations(obj: Mapping[str, Any]) -> list[str]:
    """Why ``obj``'s pod breaks the baseline profile (v1.33); empty when it passes.

    Raises :class:`NotAPodError` for an object without a pod spec (a Service, a ConfigMap...).
    """
    report = _Report("baseline")
    _baseline(_parts_or_raise(obj), report)
    return report.messages


def restricted_violations(obj: Mapping[str, Any]) -> list[str]:
    """Why ``obj``'s pod breaks the restricted profile (v1.33, which includes baseline); empty when it passes."""
    parts = _parts_or_raise(obj)
    baseline, restricted = _Report("baseline"), _Report("restricted")
    _baseline(parts, baseline)
    _restricted(parts, restricted)
    return baseline.messages + restricted.messages


def violations(obj: Mapping[str, Any], level: str) -> list[str]:
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}; use one of {LEVELS}")
    return restricted_violations(obj) if level == "restricted" else baseline_violations(obj)


def _yaml_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"{path} does not exist; pass manifest files or folders")


def check_paths(paths: Sequence[Path], level: str) -> tuple[int, list[str]]:
    """(number of pod-bearing objects checked, violation messages prefixed with their file)."""
    checked, found = 0, []
    for file in _yaml_files(paths):
        for doc in yaml.safe_load_all(file.read_text()):
            if not isinstance(doc, Mapping) or not has_pod_spec(doc):
                continue  # kustomization.yaml, Services, ConfigMaps...: no pod, nothing to admit
            checked += 1
            found.extend(f"{file}: {message}" for message in violations(doc, level))
    return checked, found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.pod_security",
        description=f"Check manifests against the Kubernetes Pod Security Standards ({POLICY_VERSION}).",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="YAML files or folders (searched for *.yaml, *.yml)")
    parser.add_argument("--level", choices=LEVELS, default="restricted", help="profile to check (default: restricted)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        checked, found = check_paths(args.paths, args.level)
    except (OSError, yaml.YAMLError) as exc:
        log.error("cannot read the manifests: %s", exc)
        return 3
    for message in found:
        print(message)
    if found:
        log.error("%d violation(s) of the %s profile in %d pod-bearing object(s)", len(found), args.level, checked)
        return 1
    log.info("%d pod-bearing object(s) pass the %s profile (%s)", checked, args.level, POLICY_VERSION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
