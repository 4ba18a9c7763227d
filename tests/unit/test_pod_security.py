"""The Pod Security Standards checker: one breaking manifest per rule, the inheritance rules, the CLI."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.pod_security import (
    NotAPodError,
    baseline_violations,
    main,
    restricted_violations,
)

ROOT = Path(__file__).resolve().parents[2]

Pod = dict[str, Any]


def restricted_pod() -> Pod:
    """A pod that meets the restricted profile, with an init container to show rules reach every list."""
    locked = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ok",
            "annotations": {"container.apparmor.security.beta.kubernetes.io/app": "runtime/default"},
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
                "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}],
            },
            "initContainers": [{"name": "init", "image": "busybox", "securityContext": copy.deepcopy(locked)}],
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "ports": [{"containerPort": 8501}],
                    "securityContext": {
                        **copy.deepcopy(locked),
                        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    },
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "cfg", "configMap": {"name": "x"}},
            ],
        },
    }


def app(pod: Pod) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def app_sc(pod: Pod) -> dict[str, Any]:
    return app(pod)["securityContext"]


def pod_sc(pod: Pod) -> dict[str, Any]:
    return pod["spec"]["securityContext"]


Mutation = Callable[[Pod], None]

# (rule id, mutation, text every matching message must contain). Baseline breaks fail both levels.
BASELINE_BREAKS: list[tuple[str, Mutation, str]] = [
    ("hostNetwork", lambda p: p["spec"].update(hostNetwork=True), "hostNetwork is true"),
    ("hostPID", lambda p: p["spec"].update(hostPID=True), "hostPID is true"),
    ("hostIPC", lambda p: p["spec"].update(hostIPC=True), "hostIPC is true"),
    ("privileged", lambda p: app_sc(p).update(privileged=True), '"app": securityContext.privileged'),
    ("capability beyond default", lambda p: app_sc(p)["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
    ("hostPath", lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), '"h".hostPath'),
    ("hostPort", lambda p: app(p)["ports"][0].update(hostPort=8501), '"app": ports[].hostPort'),
    ("AppArmor field", lambda p: app_sc(p).update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile.type"),
    (
        "AppArmor annotation",
        lambda p: p["metadata"]["annotations"].update(
            {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}
        ),
        "container.apparmor.security.beta.kubernetes.io/app",
    ),
    ("SELinux type", lambda p: pod_sc(p).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions.type"),
    (
        "SELinux user",
        lambda p: app_sc(p).update(seLinuxOptions={"user": "root"}),
        '"app": securityContext.seLinuxOptions.user',
    ),
    ("procMount", lambda p: app_sc(p).update(procMount="Unmasked"), '"app": securityContext.procMount'),
    (
        "seccomp Unconfined",
        lambda p: app_sc(p).update(seccompProfile={"type": "Unconfined"}),
        '"app": securityContext.seccompProfile',
    ),
    ("sysctl", lambda p: pod_sc(p)["sysctls"].append({"name": "kernel.msgmax", "value": "1"}), "kernel.msgmax"),
    ("hostProcess", lambda p: app_sc(p).update(windowsOptions={"hostProcess": True}), "windowsOptions.hostProcess"),
]

RESTRICTED_BREAKS: list[tuple[str, Mutation, str]] = [
    (
        "volume type",
        lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
        'volumes "n"',
    ),
    (
        "privilege escalation unset",
        lambda p: app_sc(p).pop("allowPrivilegeEscalation"),
        '"app": securityContext.allowPrivilegeEscalation',
    ),
    (
        "privilege escalation true",
        lambda p: app_sc(p).update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    (
        "runAsNonRoot pod false",
        lambda p: pod_sc(p).update(runAsNonRoot=False),
        "spec: securityContext.runAsNonRoot is false",
    ),
    (
        "runAsNonRoot container false",
        lambda p: app_sc(p).update(runAsNonRoot=False),
        '"app": securityContext.runAsNonRoot is false',
    ),
    ("runAsNonRoot nowhere", lambda p: pod_sc(p).pop("runAsNonRoot"), '"init": securityContext.runAsNonRoot is unset'),
    ("runAsUser 0 pod", lambda p: pod_sc(p).update(runAsUser=0), "spec: securityContext.runAsUser is 0"),
    ("runAsUser 0 container", lambda p: app_sc(p).update(runAsUser=0), '"app": securityContext.runAsUser is 0'),
    (
        "seccomp nowhere",
        lambda p: pod_sc(p).pop("seccompProfile"),
        '"app": securityContext.seccompProfile.type is unset',
    ),
    (
        "drop ALL missing",
        lambda p: app_sc(p)["capabilities"].update(drop=["NET_RAW"]),
        '"app": securityContext.capabilities.drop',
    ),
    ("add beyond NET_BIND_SERVICE", lambda p: app_sc(p)["capabilities"].update(add=["CHOWN"]), "CHOWN"),
]


def test_the_reference_pod_passes_both_levels() -> None:
    assert baseline_violations(restricted_pod()) == []
    assert restricted_violations(restricted_pod()) == []


@pytest.mark.parametrize(("rule", "mutate", "expected"), BASELINE_BREAKS, ids=[b[0] for b in BASELINE_BREAKS])
def test_each_baseline_rule_is_caught_at_both_levels(rule: str, mutate: Mutation, expected: str) -> None:
    pod = restricted_pod()
    mutate(pod)
    for found in (baseline_violations(pod), restricted_violations(pod)):
        assert found, f"{rule} was not caught"
        assert any(expected in message and "[baseline:" in message for message in found), found


@pytest.mark.parametrize(("rule", "mutate", "expected"), RESTRICTED_BREAKS, ids=[b[0] for b in RESTRICTED_BREAKS])
def test_each_restricted_rule_is_caught_and_baseline_allows_it(rule: str, mutate: Mutation, expected: str) -> None:
    pod = restricted_pod()
    mutate(pod)
    assert baseline_violations(pod) == []
    found = restricted_violations(pod)
    assert any(expected in message and "[restricted:" in message for message in found), (rule, found)


def test_container_settings_satisfy_restricted_without_pod_level_ones() -> None:
    pod = restricted_pod()
    pod_sc(pod).pop("runAsNonRoot")
    pod_sc(pod).pop("seccompProfile")
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        container["securityContext"].update(
            runAsNonRoot=True, seccompProfile={"type": "Localhost", "localhostProfile": "p.json"}
        )
    assert restricted_violations(pod) == []


def test_ephemeral_containers_are_checked_too() -> None:
    pod = restricted_pod()
    pod["spec"]["ephemeralContainers"] = [
        {"name": "debug", "image": "busybox", "securityContext": {"privileged": True}}
    ]
    found = restricted_violations(pod)
    assert any('ephemeralContainers[0] "debug": securityContext.privileged' in m for m in found), found
    assert any('"debug": securityContext.allowPrivilegeEscalation' in m for m in found), found
    assert any('"debug": securityContext.capabilities.drop' in m for m in found), found


def test_windows_pods_are_exempt_from_the_linux_only_restricted_rules() -> None:
    pod = restricted_pod()
    pod["spec"]["os"] = {"name": "windows"}
    pod_sc(pod).pop("seccompProfile")
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        container["securityContext"] = {}
    assert restricted_violations(pod) == []
    pod_sc(pod).pop("runAsNonRoot")  # not a Linux-only rule
    assert any("runAsNonRoot" in m for m in restricted_violations(pod))


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Deployment", ("spec", "template")),
        ("StatefulSet", ("spec", "template")),
        ("DaemonSet", ("spec", "template")),
        ("ReplicaSet", ("spec", "template")),
        ("Job", ("spec", "template")),
        ("CronJob", ("spec", "jobTemplate", "spec", "template")),
    ],
)
def test_workloads_are_checked_through_their_pod_template(kind: str, path: tuple[str, ...]) -> None:
    pod = restricted_pod()
    template: dict[str, Any] = {"metadata": pod["metadata"], "spec": pod["spec"]}
    for key in reversed(path):
        template = {key: template}
    workload = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, **template}
    assert restricted_violations(workload) == []
    app_sc(pod).update(privileged=True)
    (message,) = baseline_violations(workload)
    assert message.startswith(f'{kind}/w {".".join(path)}.spec.containers[0] "app": securityContext.privileged')


def test_a_bare_pod_spec_is_accepted_and_a_service_is_refused() -> None:
    spec = restricted_pod()["spec"]
    assert restricted_violations(spec) == []
    spec["hostPID"] = True
    assert baseline_violations(spec) == ["spec: hostPID is true; must be unset or false [baseline: Host Namespaces]"]
    with pytest.raises(NotAPodError, match="'Service' holds no pod spec"):
        restricted_violations({"kind": "Service", "metadata": {"name": "s"}, "spec": {}})


def test_cli_reports_violations_across_a_multi_document_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = restricted_pod()
    app_sc(bad).pop("allowPrivilegeEscalation")
    (tmp_path / "ok.yaml").write_text(
        yaml.safe_dump_all([{"kind": "Service", "metadata": {"name": "s"}}, restricted_pod()])
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.yml").write_text(yaml.safe_dump(bad))
    assert main([str(tmp_path / "ok.yaml")]) == 0
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'sub' / 'bad.yml'}: Pod/ok spec.containers[0]" in out and "allowPrivilegeEscalation" in out
    assert main(["--level", "baseline", str(tmp_path)]) == 0
    assert main([str(tmp_path / "missing.yaml")]) == 3


def test_cli_runs_as_a_module() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.pod_security",
            str(ROOT / "include" / "k8s" / "pod_template.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass the restricted profile (v1.33)" in result.stderr
