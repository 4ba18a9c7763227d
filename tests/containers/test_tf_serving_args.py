"""Every TF Serving the project runs or documents keeps serving_artifact's rule: model.tflite when present.

``include.mlops.registry.serving_artifact`` names which bytes a registry version serves (``model.tflite``
when the version folder holds one, else the SavedModel), and ``TF_SERVING_REQUIRED_ARGS`` what a
``tensorflow_model_server`` must be given to follow it (``--prefer_tflite_model=true``; TF Serving's
default loads ``saved_model.pb``, for an optimized version the float model that failed the budget).
This file finds every TF Serving container and checks its arguments with ``tf_serving_arg_problems``:

- include/k8s: every folder with a kustomization, rendered by ``kubectl kustomize`` (so overlays and
  patches count), and every YAML file as written (Helm values, pod_template.yaml, files no kustomization
  lists);
- docker-compose.yaml: every service;
- the Terraform module: the objects it applies (``local.applied_objects``, evaluated by ``terraform
  console`` with a mirrored server image) and any container spec written in its .tf files;
- the docs (docs/, include/ and top-level Markdown): every ``yaml`` snippet and every shell snippet that
  starts ``tensorflow_model_server`` or runs the ``tensorflow/serving`` image.

A container is TF Serving when its image is ``tensorflow/serving`` (any registry, tag or digest) or its
command runs ``tensorflow_model_server`` (a mirrored image keeps the binary's name).  Each source that has a
TF Serving today must yield at least one, so a change that hides them (a renamed binary, a parser that no
longer sees the snippets) fails instead of passing on nothing.  The project's own server
(``python -m include.mlops.serving``, image ``mlops-server``) follows the rule itself in its default
behaviour; its arguments are read with its own parser, and it must neither skip its checksum verification
(``--no-verify-checksums``) nor run a ``tfserving`` behaviour (where it has one) without
``--prefer-tflite-model``.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooling import require_executable

from include.mlops.registry.serving_artifact import (
    TF_SERVING_PREFER_TFLITE_FLAG,
    TF_SERVING_REQUIRED_ARGS,
    tf_serving_arg_problems,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "include" / "k8s"
COMPOSE = ROOT / "docker-compose.yaml"
TERRAFORM = ROOT / "include" / "terraform"
SERVER_BINARY = "tensorflow_model_server"
TF_SERVING_IMAGE = re.compile(r"(?:^|/)tensorflow/serving(?::[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})?$")
PROJECT_SERVER_IMAGE = re.compile(r"(?:^|/)mlops-server(?::[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})?$")
PROJECT_SERVER_MODULE = "include.mlops.serving"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh", "shell-session"}
YAML_LANGS = {"yaml", "yml"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
# Words that run the next word as the command (`sudo tensorflow_model_server ...`).
COMMAND_WRAPPERS = {"exec", "sudo", "nohup", "env", "time", "command"}
CONTAINER_RUNTIMES = {"docker", "podman", "nerdctl"}
# An invocation that only prints (help, version) serves nothing.
NON_SERVING_ARGS = {"--help", "-h", "--version"}


@dataclass(frozen=True)
class Found:
    """One TF Serving (or project server) invocation: where it is, and what is wrong with it (empty when nothing)."""

    where: str
    problems: tuple[str, ...]
    project_server: bool = False


# --------------------------------------------------------------------------- finding containers


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` (and ``${VAR-default}``, ``${VAR}``) with the defaults, as a fresh checkout runs it."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m[1] or "", text)


def _image_name(image: Any) -> str:
    """An image as a string (compose variables at their defaults); Helm-style ``{repository, tag}`` maps are joined."""
    if isinstance(image, dict):
        name = str(image.get("repository") or image.get("name") or "")
        tag = str(image.get("tag") or image.get("digest") or "")
        if not tag:
            return name
        return f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"
    return "" if image is None else _interpolate(str(image))


def _split_shell(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # not shell (a template, unbalanced quotes): its words are still words
        return text.split()


def _tokens(value: Any) -> list[str]:
    """A command or args value (string or list) as words; list items with spaces (``sh -c "..."``) are split."""
    if value is None:
        return []
    if isinstance(value, str):
        return _split_shell(value)
    words: list[str] = []
    for item in value:
        text = str(item)
        words.extend(_split_shell(text) if any(c.isspace() for c in text) else [text])
    return words


def _is_server_binary(word: str) -> bool:
    return word.rsplit("/", 1)[-1] == SERVER_BINARY


def _after(words: list[str], start: int) -> list[str]:
    """The words from ``start`` up to the next shell operator."""
    end = next((i for i in range(start, len(words)) if words[i] in SHELL_OPERATORS), len(words))
    return words[start:end]


def _server_problems(argv: list[str]) -> tuple[str, ...]:
    return tuple(tf_serving_arg_problems(argv))


def _judge_container(where: str, entry: list[str] | None, rest: list[str], tf_image: bool) -> Iterator[Found]:
    """``entry`` replaces the image's entrypoint (k8s ``command``, compose ``entrypoint``), ``rest`` follows it."""
    words = [*(entry or []), *rest]
    starts = [i for i, word in enumerate(words) if _is_server_binary(word)]
    for i in starts:
        yield Found(f"{where} ({SERVER_BINARY} #{starts.index(i) + 1})", _server_problems(_after(words, i + 1)))
    if starts or not tf_image:
        return
    if entry:
        # The tensorflow/serving image made to run something else: it cannot be told apart from a server
        # started in a way this test does not read, so it is not let through.
        yield Found(where, (f"runs the tensorflow/serving image as {shlex.join(entry)!r}, not {SERVER_BINARY}",))
        return
    # The image's entrypoint (tf_serving_entrypoint.sh) runs tensorflow_model_server with these arguments after
    # its own --port/--rest_api_port/--model_name/--model_base_path.
    yield Found(f"{where} (image entrypoint)", _server_problems(rest))


def _environment(node: dict[str, Any]) -> dict[str, str]:
    """A container's environment: Kubernetes ``env`` ({name, value} items) or compose ``environment`` (map or list)."""
    env: dict[str, str] = {}
    for item in node.get("env") or []:
        if isinstance(item, dict) and "value" in item:
            env[str(item.get("name"))] = str(item["value"])
    given = node.get("environment") or {}
    pairs = given.items() if isinstance(given, dict) else (str(i).split("=", 1) for i in given if "=" in str(i))
    env.update({str(k): _interpolate(str(v)) for k, v in pairs})
    return env


def _judge_project_server(where: str, words: list[str], env: dict[str, str]) -> Found:
    """The project server, judged by its own argument parser.

    In its default behaviour it serves model.tflite where a version has one, with no flag; in a ``tfserving``
    behaviour (where the server has one) only with ``--prefer-tflite-model``, like TF Serving.  It must verify
    each version's checksums at load (no ``--no-verify-checksums``).
    """
    cli = importlib.import_module(f"{PROJECT_SERVER_MODULE}.__main__")
    argv = words[words.index(PROJECT_SERVER_MODULE) + 1 :] if PROJECT_SERVER_MODULE in words else words
    try:
        args, _ = cli.build_parser().parse_known_args(argv)
    except SystemExit:
        return Found(where, (f"the project server refuses its arguments {shlex.join(argv)!r}",), True)
    problems = []
    if getattr(args, "no_verify_checksums", False):
        problems.append("the project server must verify checksums: drop --no-verify-checksums")
    tfserving = getattr(importlib.import_module(f"{PROJECT_SERVER_MODULE}.models"), "TFSERVING_BEHAVIOUR", None)
    behaviour = getattr(args, "behaviour", None)
    behaviour_env = getattr(cli, "BEHAVIOUR_ENV", None)
    if behaviour_env in env and not any(w == "--behaviour" or w.startswith("--behaviour=") for w in argv):
        behaviour = env[behaviour_env]
    if tfserving is not None and behaviour == tfserving and not getattr(args, "prefer_tflite_model", False):
        problems.append(
            f"the project server's {tfserving} behaviour serves model.tflite only with --prefer-tflite-model"
        )
    return Found(where, tuple(problems), True)


def find_servers(tree: Any, where: str, k8s: bool | None = None) -> list[Found]:
    """Every TF Serving and project-server container in a parsed YAML/JSON tree.

    ``k8s`` chooses the meaning of ``command``: True (a Kubernetes container: command replaces the
    entrypoint, args follow), False (a compose service: entrypoint replaces it, command follows), None
    (decide per mapping: inside a ``*containers`` list or with an ``args`` key it is Kubernetes).
    """
    found: list[Found] = []

    def walk(node: Any, path: str, in_containers: bool) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]", in_containers)
            return
        if not isinstance(node, dict):
            return
        keys = {"image", "command", "args", "entrypoint"} & set(node)
        if keys:
            is_k8s = k8s if k8s is not None else (in_containers or "args" in node)
            entry = _tokens(node.get("command") if is_k8s else node.get("entrypoint"))
            given = "command" in node if is_k8s else "entrypoint" in node
            rest = _tokens(node.get("args") if is_k8s else node.get("command"))
            image = _image_name(node.get("image"))
            label = f"{where} {path or '.'}" + (f" (image {image})" if image else "")
            words = [*entry, *rest]
            if PROJECT_SERVER_IMAGE.search(image) or PROJECT_SERVER_MODULE in words:
                found.append(_judge_project_server(label, words, _environment(node)))
            else:
                found.extend(
                    _judge_container(label, entry if given else None, rest, bool(TF_SERVING_IMAGE.search(image)))
                )
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                walk(value, f"{path}.{key}" if path else str(key), str(key).lower().endswith("containers"))

    walk(tree, "", False)
    return found


def check(found: list[Found], source: str) -> None:
    """Fails when ``source`` has no TF Serving at all, or when one of them breaks the rule."""
    servers = [f for f in found if not f.project_server]
    assert servers, f"no TF Serving container found in {source}: the check would pass on nothing"
    bad = [f"{f.where}: {'; '.join(f.problems)}" for f in found if f.problems]
    required = " ".join(f"{flag}={value}" for flag, value in TF_SERVING_REQUIRED_ARGS.items())
    assert not bad, (
        f"{source}: every TF Serving must run with {required} (include/mlops/registry/serving_artifact.py), "
        "so that it serves the bytes the gate measured:\n  " + "\n  ".join(bad)
    )


# --------------------------------------------------------------------------- Markdown snippets


def fenced_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number of the first body line, language, dedented body) of each fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, lang, start = opening[2], opening[3].lower(), i + 1
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence)}\s*$", lines[i]):
            i += 1
        yield start + 1, lang, textwrap.dedent("\n".join(lines[start:i]))
        i += 1


def _logical_lines(body: str) -> Iterator[tuple[int, str]]:
    """Shell lines with backslash continuations joined, console prompts dropped."""
    pending, first = "", 0
    for n, line in enumerate(body.splitlines()):
        if not pending:
            first = n
            line = re.sub(r"^\s*[$#] (?=\S)", "", line) if re.match(r"^\s*\$ ", line) else line
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def _shell_command_servers(words: list[str]) -> Iterator[list[str] | tuple[str]]:
    """The argument lists of the TF Servings one simple command starts (a 1-tuple names a problem instead)."""
    i = 0
    while i < len(words) and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[i]) or words[i] in COMMAND_WRAPPERS):
        i += 1
    words = words[i:]
    if not words:
        return
    if _is_server_binary(words[0]):
        yield words[1:]
        return
    if words[0] in CONTAINER_RUNTIMES and "run" in words[1:3]:
        images = [j for j, word in enumerate(words) if TF_SERVING_IMAGE.search(word)]
        if not images:
            return
        options = words[: images[0]]
        entrypoints = [
            options[j + 1] if option == "--entrypoint" and j + 1 < len(options) else option.split("=", 1)[1]
            for j, option in enumerate(options)
            if option == "--entrypoint" or option.startswith("--entrypoint=")
        ]
        after = words[images[0] + 1 :]
        if not entrypoints or _is_server_binary(entrypoints[-1]):
            yield after
        else:
            yield (f"runs the tensorflow/serving image with --entrypoint {entrypoints[-1]}, not {SERVER_BINARY}",)
        return
    dashdash = words.index("--") if "--" in words else len(words)
    if (
        words[0] == "kubectl"
        and "run" in words[1:3]
        and any(TF_SERVING_IMAGE.search(w.removeprefix("--image=")) for w in words[:dashdash])
    ):
        after = words[dashdash + 1 :]
        if "--command" in words:
            starts = [j for j, w in enumerate(after) if _is_server_binary(w)]
            yield after[starts[0] + 1 :] if starts else (f"kubectl run --command does not start {SERVER_BINARY}",)
        else:
            yield after


def find_in_shell(body: str, where: str, first_line: int = 1) -> list[Found]:
    """TF Servings a shell snippet starts; ``where:line`` names each, counting the body from ``first_line``."""
    found: list[Found] = []
    for n, line in _logical_lines(body):
        if SERVER_BINARY not in line and "tensorflow/serving" not in line:
            continue
        label = f"{where}:{first_line + n}"
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError as exc:
            found.append(Found(label, (f"cannot read the shell line ({exc}): {line.strip()!r}",)))
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word not in SHELL_OPERATORS:
                command.append(word)
                continue
            for argv in _shell_command_servers(command):
                if isinstance(argv, tuple):
                    found.append(Found(label, argv))
                elif not NON_SERVING_ARGS & set(argv):
                    found.append(Found(label, _server_problems(list(argv))))
            command = []
    return found


def find_in_markdown(text: str, where: str) -> list[Found]:
    found: list[Found] = []
    for line, lang, body in fenced_blocks(text):
        if SERVER_BINARY not in body and "tensorflow/serving" not in body:
            continue
        if lang in YAML_LANGS:
            label = f"{where}:{line}"
            try:
                docs = list(yaml.safe_load_all(body))
            except yaml.YAMLError as exc:
                found.append(Found(label, (f"the yaml snippet does not parse, so it cannot be checked: {exc}",)))
                continue
            for doc in docs:
                found.extend(find_servers(doc, label))
        elif lang in SHELL_LANGS:
            found.extend(find_in_shell(body, where, line))
    return found


def doc_files() -> list[Path]:
    return sorted({*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "include").rglob("*.md")})


# --------------------------------------------------------------------------- kustomize


def kustomization_dirs() -> list[Path]:
    return sorted({p.parent for name in KUSTOMIZATION_NAMES for p in K8S.rglob(name)})


def kustomize(path: Path) -> list[Any]:
    kubectl = require_executable("kubectl", "the TF Serving checks render include/k8s with `kubectl kustomize`")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def rendered(path: Path) -> tuple[Any, ...]:
    return tuple(kustomize(path))


def find_in_objects(objects: Any, source: str) -> list[Found]:
    found: list[Found] = []
    for obj in objects:
        name = (
            f"{obj.get('kind')}/{obj.get('metadata', {}).get('namespace', '-')}/{obj.get('metadata', {}).get('name')}"
        )
        found.extend(find_servers(obj, f"{source} {name}", k8s=True))
    return found


# =========================================================================== the project's files


def test_the_rule_is_prefer_tflite_and_labels_at_start() -> None:
    assert dict(TF_SERVING_REQUIRED_ARGS) == {
        TF_SERVING_PREFER_TFLITE_FLAG: "true",
        "--allow_version_labels_for_unavailable_models": "true",
    }
    assert TF_SERVING_PREFER_TFLITE_FLAG == "--prefer_tflite_model"


def test_every_kustomization_runs_tf_serving_with_the_rule() -> None:
    dirs = kustomization_dirs()
    assert K8S / "serving" in dirs and K8S / "serving" / "base" in dirs, dirs
    found: list[Found] = []
    for path in dirs:
        found.extend(find_in_objects(rendered(path), f"kubectl kustomize {path.relative_to(ROOT)}:"))
    check(found, "include/k8s (rendered kustomizations)")
    # The official server applied by `kubectl apply -k include/k8s/serving` is among them.
    assert [f for f in find_in_objects(rendered(K8S / "serving"), "serving") if not f.project_server]


def test_every_yaml_file_under_k8s_runs_tf_serving_with_the_rule() -> None:
    """As written, including what no kustomization lists (Helm values, pod_template.yaml)."""
    found: list[Found] = []
    for path in sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")]):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            found.extend(find_servers(doc, f"{path.relative_to(ROOT)}#{i}"))
    check(found, "include/k8s/**/*.yaml")


def test_compose_services_keep_the_rule() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services
    found: list[Found] = []
    for name, service in services.items():
        found.extend(find_servers(service, f"docker-compose.yaml services.{name}", k8s=False))
    bad = [f"{f.where}: {'; '.join(f.problems)}" for f in found if f.problems]
    assert not bad, "\n".join(bad)
    if not [f for f in found if not f.project_server]:
        # Compose serves with the project's own server (include/docker/server), not TF Serving; it follows
        # serving_artifact's rule by itself.  A compose file with neither would mean this check reads nothing.
        assert any(f.project_server for f in found), "docker-compose.yaml has neither TF Serving nor the project server"
    else:
        check(found, "docker-compose.yaml")


def test_doc_snippets_run_tf_serving_with_the_rule() -> None:
    found: list[Found] = []
    for path in doc_files():
        found.extend(find_in_markdown(path.read_text(), str(path.relative_to(ROOT))))
    check(found, "the docs' yaml and shell snippets")
    # Both of serving.md's snippets (the command line and the compose service) are read.
    serving = [f for f in found if f.where.startswith("docs/serving.md") and not f.project_server]
    assert len(serving) >= 2, serving


def test_terraform_applies_tf_serving_with_the_rule(tmp_path: Path) -> None:
    from terraform_module import evaluate, parse, tf_files, unquote

    # Written into any .tf file, a container spec would be checked like the manifests (none today: the module
    # applies include/k8s).
    def unquoted(node: Any) -> Any:
        if isinstance(node, dict):
            return {unquote(k): unquoted(v) for k, v in node.items() if k != "__comments__"}
        if isinstance(node, list):
            return [unquoted(v) for v in node]
        return unquote(node)

    embedded: list[Found] = []
    for path in [*tf_files(TERRAFORM), *sorted((TERRAFORM / "examples").rglob("*.tf"))]:
        embedded.extend(find_servers(unquoted(parse(path)), str(path.relative_to(ROOT)), k8s=True))
    assert not [f for f in embedded if f.problems], embedded

    # What the module applies, evaluated by terraform itself.  A mirrored image is not named tensorflow/serving,
    # so the server is found by its command, as it would be in such a cluster.
    inputs = {
        "artifact_share": {"nfs": {"server": "nfs.example.internal", "path": "/exports/x"}},
        "image": {"repository": "registry.example.com/airflow-tf-lifecycle", "tag": "0.1.0"},
        "model_server_image": "mirror.example.com/tf/serving-mirror:2.21.0",
    }
    objects, stderr = evaluate(tmp_path, "local.applied_objects", inputs)
    assert objects is not None, f"terraform could not evaluate local.applied_objects:\n{stderr}"
    found = find_in_objects(objects, "include/terraform local.applied_objects:")
    check(found, "the Terraform module's objects")
    assert any("serving-mirror" in f.where for f in found), found


def test_project_server_overlay_follows_the_rule_itself() -> None:
    """The project-server overlay replaces TF Serving; its server reads model.tflite first without a flag."""
    found = find_in_objects(rendered(K8S / "serving" / "overlays" / "project-server"), "project-server")
    assert [f for f in found if f.project_server] and not [f for f in found if not f.project_server], found
    assert not [f for f in found if f.problems], found


def test_the_canary_runs_both_tf_servings_with_the_rule() -> None:
    """serving/canary derives its second Deployment from the base by patch; both servers keep the flags."""
    found = find_in_objects(rendered(K8S / "serving" / "canary"), "canary")
    servers = sorted(f.where.split()[1] for f in found if not f.project_server)
    assert servers == [
        "Deployment/mlops-steps/mlops-model-server",
        "Deployment/mlops-steps/mlops-model-server-canary",
    ], found
    check(found, "include/k8s/serving/canary")


# =========================================================================== self-checks on synthetic input


def _deployment(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "synthetic", "namespace": "ns"},
        "spec": {"template": {"spec": {"containers": [{"name": "server", **container}]}}},
    }


ALLOW_LABELS = "--allow_version_labels_for_unavailable_models=true"
GOOD_ARGS = ["--port=8500", "--model_config_file=/models/models.config", "--prefer_tflite_model=true", ALLOW_LABELS]
BAD_ARGS = ["--port=8500", "--model_config_file=/models/models.config"]


MISSING = "--prefer_tflite_model=true is missing"
TFS = "tensorflow/serving:2.21.0"


@pytest.mark.parametrize(
    ("container", "problem"),
    [
        pytest.param({"image": TFS, "command": [SERVER_BINARY], "args": GOOD_ARGS}, None, id="flag"),
        pytest.param({"image": TFS, "command": [SERVER_BINARY], "args": BAD_ARGS}, MISSING, id="no-flag"),
        pytest.param({"image": TFS, "args": BAD_ARGS}, MISSING, id="entrypoint-no-flag"),
        pytest.param({"image": TFS, "args": GOOD_ARGS}, None, id="entrypoint-flag"),
        pytest.param({"image": "docker.io/tensorflow/serving@sha256:" + "a" * 64}, MISSING, id="digest-no-args"),
        pytest.param(
            {"image": TFS, "args": [*GOOD_ARGS, "--prefer_tflite_model=false"]},
            "the last occurrence is '--prefer_tflite_model=false'",
            id="overridden-later",
        ),
        pytest.param(
            {"image": TFS, "args": [*BAD_ARGS, "--prefer_tflite_model", "true"]},
            "the last occurrence is '--prefer_tflite_model'",
            id="separate-value",
        ),
        pytest.param(
            {"image": "mirror.example.com/x:1", "command": ["/usr/bin/" + SERVER_BINARY], "args": BAD_ARGS},
            MISSING,
            id="mirror",
        ),
        pytest.param(
            {"image": "busybox", "command": ["sh", "-c", f"exec {SERVER_BINARY} {' '.join(GOOD_ARGS)}"]},
            None,
            id="shell-flag",
        ),
        pytest.param(
            {"image": "busybox", "command": ["sh", "-c", f"{SERVER_BINARY} {' '.join(BAD_ARGS)} && true"]},
            MISSING,
            id="shell-no-flag",
        ),
        pytest.param({"image": TFS, "command": ["sleep", "1"]}, "not tensorflow_model_server", id="other-command"),
    ],
)
def test_self_check_containers(container: dict[str, Any], problem: str | None) -> None:
    found = find_servers(_deployment(container), "synthetic")
    assert len(found) == 1, found
    if problem is None:
        check(found, "synthetic")
    else:
        assert any(problem in p for p in found[0].problems), found
        with pytest.raises(
            AssertionError, match="every TF Serving must run with --prefer_tflite_model=true --allow_version_labels"
        ):
            check(found, "synthetic")


def test_self_check_fails_on_nothing_found() -> None:
    for tree in ({}, _deployment({"image": "busybox", "args": ["--prefer_tflite_model=true"]})):
        with pytest.raises(AssertionError, match="no TF Serving container found"):
            check(find_servers(tree, "synthetic"), "synthetic")
    # The method names of TF Serving's signatures are not its image.
    assert not find_servers({"method_name": "tensorflow/serving/predict", "image": "tensorflow/serving/classify"}, "x")


def test_self_check_an_overlay_that_drops_the_flag_fails(tmp_path: Path) -> None:
    """Rendered, not read: an overlay that replaces the server's args is caught through kustomize."""
    base = K8S / "serving"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(base, tmp_path)],  # kustomize takes no absolute path
                "patches": [
                    {
                        "target": {"kind": "Deployment", "name": "mlops-model-server"},
                        "patch": yaml.safe_dump(
                            [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": BAD_ARGS}]
                        ),
                    }
                ],
            }
        )
    )
    found = find_in_objects(kustomize(tmp_path), "synthetic overlay")
    assert found and all(f.problems for f in found if not f.project_server), found
    with pytest.raises(AssertionError, match="--prefer_tflite_model=true is missing"):
        check(found, "synthetic overlay")


def test_self_check_compose_service() -> None:
    services = {
        "tfs": {"image": "tensorflow/serving:2.21.0", "command": BAD_ARGS},
        "tfs-string": {"image": "tensorflow/serving:2.21.0", "command": " ".join(GOOD_ARGS)},
        "tfs-entrypoint": {"image": "tensorflow/serving:2.21.0", "entrypoint": ["sh"], "command": ["-c", "true"]},
        "local": {"image": "mlops-server:local", "command": ["--registry", "/models", "--no-verify-checksums"]},
        "other": {"image": "prom/prometheus:v2.42.0", "command": ["--web.enable-lifecycle"]},
    }
    found = {f.where.split()[1]: f for f in find_servers({"services": services}, "compose", k8s=False)}
    assert {name: bool(f.problems) for name, f in found.items()} == {
        "services.tfs": True,
        "services.tfs-string": False,
        "services.tfs-entrypoint": True,
        "services.local": True,
    }, found
    assert found["services.local"].project_server


@pytest.mark.parametrize(
    ("container", "problem"),
    [
        pytest.param({"image": "mlops-server:local", "command": ["--registry", "/models"]}, None, id="default"),
        pytest.param(
            {"image": "mlops-server:local", "command": ["--registry", "/models", "--no-verify-checksums"]},
            "verify checksums",
            id="no-checksums",
        ),
        pytest.param(
            {"image": "mlops-server:local", "command": ["--behaviour", "tfserving"]},
            "only with --prefer-tflite-model",
            id="tfserving-no-flag",
        ),
        pytest.param(
            {"image": "mlops-server:local", "command": ["--behaviour=tfserving", "--prefer-tflite-model"]},
            None,
            id="tfserving-flag",
        ),
        pytest.param(
            {"image": "mlops-server:local", "environment": {"MLOPS_SERVER_BEHAVIOUR": "tfserving"}},
            "only with --prefer-tflite-model",
            id="tfserving-from-env",
        ),
    ],
)
def test_self_check_project_server(container: dict[str, Any], problem: str | None) -> None:
    cli = importlib.import_module(f"{PROJECT_SERVER_MODULE}.__main__")
    if "tfserving" in repr(container) and getattr(cli, "BEHAVIOUR_ENV", None) is None:
        pytest.skip("the project server has no tfserving behaviour")
    (found,) = find_servers(container, "synthetic", k8s=False)
    assert found.project_server
    if problem is None:
        assert not found.problems, found
    else:
        assert any(problem in p for p in found.problems), found


def test_self_check_markdown_snippets() -> None:
    doc = textwrap.dedent(
        f"""
        Text that names {SERVER_BINARY} outside a snippet is not read.

        ```bash
        # {SERVER_BINARY} --port=8500      (a comment: not a command)
        docker pull tensorflow/serving:2.21.0
        {SERVER_BINARY} \\
          --port=8500 \\
          --model_config_file=/models/models.config
        ```

        ```console
        $ docker run --rm -p 8501:8501 -v "$PWD/models:/models" tensorflow/serving:2.21.0 \\
            --model_config_file=/models/models.config --prefer_tflite_model=true {ALLOW_LABELS}
        $ docker run --rm --entrypoint {SERVER_BINARY} tensorflow/serving:2.21.0 --help
        ```

        1. In a list:

           ```yaml
             model-server:
               image: tensorflow/serving:2.21.0
               command: ["--model_config_file=/models/models.config"]
           ```

        ```sh
        kubectl run tfs --image=tensorflow/serving:2.21.0 -- --model_config_file=/m --prefer_tflite_model=true \\
            {ALLOW_LABELS}
        ```
        """
    )
    found = find_in_markdown(doc, "doc.md")
    assert [(f.where, bool(f.problems)) for f in found] == [
        ("doc.md:7", True),
        ("doc.md:13", False),
        ("doc.md:21 model-server (image tensorflow/serving:2.21.0) (image entrypoint)", True),
        ("doc.md:27", False),
    ], found
    with pytest.raises(AssertionError, match="--prefer_tflite_model=true is missing"):
        check(found, "doc.md")
