"""docs/production.md, step 4: the first Admin's password is stored in a Secret and read back by one command.

The page's own commands run in order against a stand-in ``kubectl`` (Secrets kept as files, ``exec`` runs the
command here) and a stand-in ``airflow`` that records the user it is asked to create: the password the Admin
gets must be the one the documented read-back command prints, and it must never be on a command line of
your shell.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from markdown_blocks import ROOT, shell_commands

PAGE = ROOT / "docs" / "production.md"
SECRET = "mlops-airflow-admin"

FAKE_KUBECTL = r"""
import base64, json, os, subprocess, sys
from pathlib import Path
store = Path(os.environ["FAKE_KUBE_STORE"])
args = sys.argv[1:]
if args[:1] == ["-n"]:
    args = args[2:]
with open(store / "calls.log", "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:3] == ["create", "secret", "generic"]:
    data = {}
    for arg in args[4:]:
        key, _, value = arg.removeprefix("--from-literal=").partition("=")
        data[key] = base64.b64encode(value.encode()).decode()
    target = store / f"secret-{args[3]}.json"
    if target.exists():
        sys.exit(f'Error from server (AlreadyExists): secrets "{args[3]}" already exists')
    target.write_text(json.dumps(data))
elif args[:2] == ["get", "secret"]:
    data = json.loads((store / f"secret-{args[2]}.json").read_text())
    (path,) = [a.removeprefix("jsonpath=") for a in args if a.startswith("jsonpath=")] or [args[args.index("-o") + 1].removeprefix("jsonpath=")]
    sys.stdout.write(data[path.strip("{}").removeprefix(".data.")])
elif args[:1] == ["exec"]:
    sys.exit(subprocess.run(args[args.index("--") + 1 :]).returncode)
else:
    sys.exit(f"fake kubectl: unexpected {args}")
"""

FAKE_AIRFLOW = r"""
import json, os, sys
from pathlib import Path
Path(os.environ["FAKE_KUBE_STORE"], "airflow-users.json").write_text(json.dumps(sys.argv[1:]))
"""


def _tool(folder: Path, name: str, source: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _admin_commands() -> tuple[list[str], str]:
    """The commands that create the Admin, in page order, and the documented read-back command."""
    texts = [command.text for command in shell_commands(PAGE) if SECRET in command.text]
    create = [text for text in texts if f"create secret generic {SECRET}" in text]
    users = [text for text in texts if "airflow users create" in text]
    assert len(create) == 1 and len(users) == 1, f"{PAGE.name} must create {SECRET} once and the Admin once"
    assert texts.index(create[0]) < texts.index(users[0]), "the Secret must exist before the Admin is created"
    read_back = [text for text in texts[texts.index(users[0]) + 1 :] if "get secret" in text]
    assert len(read_back) == 1, f"{PAGE.name} must show one command that reads the Admin's password back"
    return [create[0], users[0]], read_back[0]


def test_the_admin_password_is_stored_in_a_secret_and_read_back_by_the_documented_command(tmp_path: Path) -> None:
    setup, read_back = _admin_commands()
    for text in setup:
        # A password generated inside the `airflow users create` call is never shown or stored anywhere.
        assert "users create" not in text or "openssl" not in text, text
    bin_dir, store = tmp_path / "bin", tmp_path / "store"
    bin_dir.mkdir()
    store.mkdir()
    _tool(bin_dir, "kubectl", FAKE_KUBECTL)
    _tool(bin_dir, "airflow", FAKE_AIRFLOW)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_KUBE_STORE": str(store)}

    def run(script: str) -> str:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{script}\n{result.stderr}"
        return result.stdout

    run("\n".join(setup))
    password = run(read_back).strip()
    assert len(password) >= 16, f"the read-back command printed {password!r}"
    created = (store / "airflow-users.json").read_text()
    assert f'"--password", "{password}"' in created, "the Admin got another password than the Secret holds"
    assert '"--role", "Admin"' in created
    # From the Secret to the CLI it travelled through stdin, never as an argument of a kubectl call.
    calls = (store / "calls.log").read_text().splitlines()
    assert not [call for call in calls if password in call and '"create", "secret"' not in call]
