"""Reading the README and docs/ as data: fenced code blocks, the shell commands in them, and tables."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
SHELL_LANGUAGES = frozenset({"bash", "sh", "console", "shell"})

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class CodeBlock:
    page: Path
    line: int  # 1-based line of the first line inside the fence
    language: str
    text: str


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str  # the command as written, continuation lines included, comments kept

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.text}"


def code_blocks(page: Path) -> Iterator[CodeBlock]:
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, language = opening.groups()
        first_line = index + 2  # 1-based number of the line after the fence
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index])
            index += 1
        yield CodeBlock(page, first_line, language.lower(), "\n".join(body) + "\n")
        index += 1


def shell_blocks(page: Path) -> Iterator[CodeBlock]:
    return (block for block in code_blocks(page) if block.language in SHELL_LANGUAGES)


def _complete(text: str) -> bool:
    """Whether ``text`` is a whole command: no open quote, no trailing backslash."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # "No closing quotation"
        return False
    return True


def commands(block: CodeBlock) -> Iterator[Command]:
    """The block's commands, one per logical line (continuations and multi-line quotes joined).

    Comment lines are skipped; in ``console`` blocks only ``$ `` lines are commands.
    """
    pending: list[str] = []
    start = 0
    for offset, raw in enumerate(block.text.splitlines()):
        line = raw
        if not pending:
            if block.language == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = block.line + offset
        pending.append(line)
        text = "\n".join(pending)
        if _complete(text):
            yield Command(block.page, start, text)
            pending = []
    if pending:
        yield Command(block.page, start, "\n".join(pending))


def shell_commands(page: Path) -> list[Command]:
    return [command for block in shell_blocks(page) for command in commands(block)]


def words(command: Command) -> list[str]:
    """The command's words as the shell splits them (quotes removed, comments dropped)."""
    return shlex.split(command.text.replace("\\\n", " "), comments=True)


def tables_after(page_text: str, marker: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after the line that starts with ``marker``."""
    lines = page_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header
