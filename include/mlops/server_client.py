"""The few TF Serving REST calls a deploy needs (works with TF Serving and the local server)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


class ServerNotReadyError(RuntimeError):
    """The model server did not report the version AVAILABLE (or could not load it)."""


class ModelServerClient:
    """The few TF Serving REST calls a deploy needs (works with TF Serving and the local server)."""

    def __init__(self, url: str, *, timeout: float = 120.0, poll_seconds: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.poll_seconds = poll_seconds

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """``(http_status, parsed_json)``; a connection failure raises ``OSError``."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=min(30.0, self.timeout)) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, {"error": body[:500].decode(errors="replace")}

    def status(self, name: str, *, version: int | None = None, label: str | None = None) -> tuple[int, Any]:
        path = f"/v1/models/{name}" + (f"/versions/{version}" if version is not None else "")
        path += f"/labels/{label}" if label is not None else ""
        return self.request("GET", path)

    def wait_available(self, name: str, *, version: int, label: str | None = None) -> None:
        """Poll until the server reports ``version`` (through ``label`` if given) AVAILABLE, or fail.

        A version that the server tried and failed to load (state END with an
        error) fails at once with the server's error message.
        """
        deadline = time.monotonic() + self.timeout
        last = "no answer yet"
        while True:
            try:
                code, body = self.status(name, version=None if label else version, label=label)
                if code == 200 and isinstance(body, Mapping):
                    entries = body.get("model_version_status") or []
                    entry = next((e for e in entries if str(e.get("version")) == str(version)), None)
                    if entry is not None and entry.get("state") == "AVAILABLE":
                        return
                    if entry is not None:
                        status = entry.get("status") or {}
                        if entry.get("state") == "END" and status.get("error_code", "OK") != "OK":
                            raise ServerNotReadyError(
                                f"the server could not load version {version}: {status.get('error_message')}"
                            )
                        last = f"version {version} is {entry.get('state')}"
                    else:
                        shown = [f"{e.get('version')}={e.get('state')}" for e in entries]
                        last = f"the server reports {', '.join(shown) or 'no versions'}"
                else:
                    last = f"HTTP {code}: {body.get('error') if isinstance(body, Mapping) else body}"
            except OSError as exc:
                last = f"cannot reach the server ({exc})"
            if time.monotonic() >= deadline:
                via = f" through label {label!r}" if label else ""
                raise ServerNotReadyError(
                    f"{name} version {version} was not AVAILABLE{via} within {self.timeout:g} s ({last})"
                )
            time.sleep(self.poll_seconds)
