"""Read a Dockerfile's instructions the way ``docker build`` does, for offline tests of the images.

No image can be pulled or built in most test runs, so the tests check what a Dockerfile *says*: the
environment its final stage sets (``ENV``, with ``ARG`` and ``ENV`` substitution) and what it copies
from the build context (``COPY``/``ADD``, after ``.dockerignore``). Only the final stage is read.
The parser covers the Dockerfile syntax this project uses and fails loudly on the rest, so that a
new construct extends it rather than being silently misread.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import exclude_paths

# ${VAR}, ${VAR:-default}, ${VAR:+alternative} and $VAR, as the Dockerfile frontend expands them.
_VARIABLE = re.compile(
    r"\\\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, ENV, COPY, ...
    arguments: str  # continuation lines joined, comments removed


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]  # relative to the build context
    destination: str  # absolute, after WORKDIR and substitution
    flags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FinalStage:
    env: dict[str, str]  # what ENV sets in the final stage (not the base image's own environment)
    copies: tuple[Copy, ...]
    runs: tuple[str, ...]  # RUN commands, unexpanded


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions; comment lines vanish even inside a continued instruction."""
    parsed: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue
        if not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        parsed.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    if pending:
        raise ValueError(f"the Dockerfile ends inside a continued instruction: {pending!r}")
    return parsed


def substitute(value: str, variables: dict[str, str]) -> str:
    """``value`` with Dockerfile variable references expanded (an unknown variable is empty, as in Docker)."""

    def expand(match: re.Match[str]) -> str:
        if match[0] == "\\$":
            return "$"
        name = match["braced"] or match["bare"]
        current = variables.get(name, "")
        if match["op"] == ":-":
            return current or substitute(match["word"], variables)
        if match["op"] == ":+":
            return substitute(match["word"], variables) if current else ""
        return current

    return _VARIABLE.sub(expand, value)


def _key_values(arguments: str, variables: dict[str, str]) -> dict[str, str]:
    """``KEY=VALUE ...`` (or the legacy ``KEY VALUE``) of ENV, expanded with the variables before it."""
    words = shlex.split(arguments)
    if words and "=" not in words[0]:
        return {words[0]: substitute(" ".join(words[1:]), variables)}
    pairs: dict[str, str] = {}
    for word in words:
        key, separator, value = word.partition("=")
        if not separator:
            raise ValueError(f"cannot read {word!r} in ENV {arguments!r}: expected KEY=VALUE")
        pairs[key] = substitute(value, variables)
    return pairs


def _copy(arguments: str, variables: dict[str, str], workdir: str) -> Copy:
    words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    if len(words) < 2:
        raise ValueError(f"COPY/ADD needs at least one source and a destination: {arguments!r}")
    *sources, destination = (substitute(word, variables) for word in words)
    destination = posixpath.join(workdir, destination)
    if destination.endswith("/") and len(destination) > 1:
        destination = destination.rstrip("/") + "/"
    return Copy(tuple(sources), destination, flags)


def final_stage(dockerfile: Path, build_args: dict[str, str] | None = None) -> FinalStage:
    """The environment, copies and RUN commands of the Dockerfile's last stage."""
    build_args = build_args or {}
    global_args: dict[str, str] = {}
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    copies: list[Copy] = []
    runs: list[str] = []
    workdir = "/"
    seen_from = False
    for instruction in instructions(dockerfile.read_text()):
        variables = {**args, **env}
        if instruction.keyword == "FROM":
            seen_from, args, env, copies, runs, workdir = True, {}, {}, [], [], "/"
        elif instruction.keyword == "ARG":
            name, has_default, default = instruction.arguments.partition("=")
            # Inside a stage, a bare `ARG NAME` takes the global ARG's value; one with a default keeps it.
            fallback = substitute(default, variables) if has_default else global_args.get(name, "")
            value = build_args.get(name, fallback)
            (args if seen_from else global_args)[name] = value
        elif instruction.keyword == "ENV":
            env.update(_key_values(instruction.arguments, variables))
        elif instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, substitute(instruction.arguments, variables))
        elif instruction.keyword in ("COPY", "ADD"):
            copies.append(_copy(instruction.arguments, variables, workdir))
        elif instruction.keyword == "RUN":
            runs.append(instruction.arguments)
    if not seen_from:
        raise ValueError(f"{dockerfile} has no FROM instruction")
    return FinalStage(env, tuple(copies), tuple(runs))


def dockerignore_patterns(context: Path) -> list[str]:
    """The context's .dockerignore patterns, read as the Docker SDK's build() reads them."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(context: Path, dockerfile: Path) -> set[str]:
    """Every path ``docker build`` sends from ``context`` (relative, POSIX), after .dockerignore."""
    relative = dockerfile.resolve().relative_to(context.resolve()).as_posix()
    return {Path(p).as_posix() for p in exclude_paths(str(context), dockerignore_patterns(context), relative)}


def copied_files(copy: Copy, context: Path, sent: set[str]) -> dict[str, str]:
    """For one COPY from the build context: each destination file -> its source in the context.

    COPY of a folder copies its contents into the destination; a file goes to ``dest`` or, when the
    destination ends with ``/`` or there are several sources, into it. A source that .dockerignore
    excludes fails the build, as in Docker.
    """
    if "from" in copy.flags:
        raise ValueError(f"COPY --from={copy.flags['from']} copies from another stage; extend tests/dockerfiles.py")
    placed: dict[str, str] = {}
    into_folder = copy.destination.endswith("/") or len(copy.sources) > 1
    for source in copy.sources:
        if _WILDCARD.search(source) or "://" in source:
            raise ValueError(f"COPY/ADD source {source!r} is a pattern or URL; extend tests/dockerfiles.py")
        source = posixpath.normpath(source).lstrip("/")
        if source in (".", ""):
            raise ValueError("COPY of the whole context is not supported; extend tests/dockerfiles.py")
        if source not in sent:
            raise FileNotFoundError(f"COPY {source}: not in the build context (missing, or excluded by .dockerignore)")
        if (context / source).is_dir():
            prefix = source + "/"
            for path in sorted(p for p in sent if p.startswith(prefix) and (context / p).is_file()):
                placed[posixpath.join(copy.destination, path[len(prefix) :])] = path
        else:
            target = posixpath.join(copy.destination, posixpath.basename(source)) if into_folder else copy.destination
            placed[target] = source
    return placed
