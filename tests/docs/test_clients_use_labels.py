"""Every request the project ships or shows goes through a version label, never to the bare model.

TF Serving answers ``/v1/models/<name>:predict`` with the highest loaded version.
A deploy loads its candidate before it moves a label, so for the length of a
deploy that is a version nobody verified (docs/serving.md, "Requests without a
version or label").  So no client of ours sends such a request: the deploy's
smoke check, the traffic generator, the benchmarks, the dashboards' links, and
every example in the README and docs/ address ``/labels/<label>`` (or a
version, for a check of that version).  The model server's own routes are not
clients and are left out; so are the tests, which probe the bare route on purpose.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (
    "README.md",
    "docker-compose.yaml",
    "Makefile",
    "docs",
    "include",
    "plugins",
    "dags",
    "scripts",
    "benchmarks",
)
SUFFIXES = {".md", ".py", ".json", ".yaml", ".yml", ".sh", ".html", ".j2", ".txt", ""}
SERVER = ROOT / "include" / "mlops" / "serving"  # the routes themselves
# A request path to a model with a method and no label or version in between (a literal, an f-string, a <name>).
UNLABELLED = re.compile(r"/v1/models/[^/\s\"'`)]+:(?:predict|classify|regress)\b")
# Where the bare route is named to explain it, not sent.
EXPLAINED = {
    ("docs/serving.md", "**Requests without a version or label** (`/v1/models/<name>:predict`)"),
}


def shipped_files() -> list[Path]:
    files = []
    for entry in SHIPPED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [
            p for p in candidates if p.suffix in SUFFIXES and SERVER not in p.parents and "__pycache__" not in p.parts
        ]
    return files


def test_the_scan_sees_the_clients_and_would_catch_a_bare_request() -> None:
    names = {str(p.relative_to(ROOT)) for p in shipped_files()}
    assert {
        "README.md",
        "docs/serving.md",
        "include/mlops/monitoring/traffic.py",
        "include/mlops/deploy/smoke.py",
    } <= names
    assert UNLABELLED.search('client.post(f"/v1/models/{name}:predict", json=body)')
    assert UNLABELLED.search("curl -X POST localhost:8501/v1/models/diabetes:classify")
    assert not UNLABELLED.search("curl -X POST localhost:8501/v1/models/diabetes/labels/stable:predict")
    assert not UNLABELLED.search('f"/v1/models/{name}/versions/{version}:predict"')


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shipped_client_or_example_sends_a_request_without_a_label(path: Path) -> None:
    where = str(path.relative_to(ROOT))
    bare = [
        f"{where}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
        if UNLABELLED.search(line) and not any(page == where and text in line for page, text in EXPLAINED)
    ]
    assert not bare, "address /labels/<label> (e.g. stable): " + "; ".join(bare)
