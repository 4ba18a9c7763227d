"""The few TF Serving REST calls a deploy needs (works with TF Serving and the local server).

HTTP goes through httpx; waiting for a version to load is a tenacity retry
loop: only "not available yet" is retried, while a version the server tried
and failed to load fails at once with the server's own error message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import httpx
import tenacity

log = logging.getLogger(__name__)


class ServerNotReadyError(RuntimeError):
    """The model server did not report the version AVAILABLE (or could not load it)."""


class ServerUnreachableError(ConnectionError):
    """No HTTP answer from the model server (refused, timed out, DNS); an ``OSError`` like a socket error."""


class _NotAvailableYet(Exception):
    """One poll found the version not (yet) AVAILABLE; the message says what the server reported."""


class ModelServerClient:
    """The few TF Serving REST calls a deploy needs (works with TF Serving and the local server).

    ``timeout`` bounds :meth:`wait_available`; a single HTTP request waits at
    most ``min(30 s, timeout)``.  Use it as a context manager (or call
    :meth:`close`) to release the connection pool.
    """

    def __init__(self, url: str, *, timeout: float = 120.0, poll_seconds: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self._http = httpx.Client(base_url=self.url, timeout=min(30.0, timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ModelServerClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """``(http_status, parsed_json)``; no answer at all raises :class:`ServerUnreachableError`.

        A body that is not JSON comes back as ``{"error": <its first 500 characters>}``.
        """
        try:
            response = self._http.request(method, path, json=payload)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"cannot reach {self.url}{path}: {exc!r}") from exc
        if not response.content:
            return response.status_code, None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": response.text[:500]}

    def example_signatures(self, name: str, label: str) -> dict[str, str]:
        """The signatures ``label`` serves that take tf.Examples: ``{signature: "classify" | "regress"}``."""
        code, body = self.request("GET", f"/v1/models/{name}/labels/{label}/metadata")
        if code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else body
            raise ServerNotReadyError(f"{name} label {label!r}: metadata answered HTTP {code}: {error}")
        defs = body.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        methods = {"tensorflow/serving/classify": "classify", "tensorflow/serving/regress": "regress"}
        return {key: methods[d["method_name"]] for key, d in sorted(defs.items()) if d.get("method_name") in methods}

    def label_version(self, name: str, label: str) -> int | None:
        """The version ``label`` answers with now (its metadata's ``model_spec.version``); None: it answers none.

        Metadata, not status: TF Serving's status API ignores a label and lists
        every version, while metadata resolves the label as a predict does.
        An unknown label (400) or model (404) is None; any other answer raises
        :class:`ServerNotReadyError`.
        """
        code, body = self.request("GET", f"/v1/models/{name}/labels/{label}/metadata")
        if code in (400, 404):
            return None
        spec = body.get("model_spec") if isinstance(body, Mapping) else None
        if code != 200 or not isinstance(spec, Mapping):
            error = body.get("error") if isinstance(body, Mapping) else body
            raise ServerNotReadyError(f"{name} label {label!r}: metadata answered HTTP {code}: {error}")
        try:
            return int(spec.get("version"))
        except (TypeError, ValueError):
            raise ServerNotReadyError(f"{name} label {label!r}: metadata names no version: {spec}") from None

    def wait_label(
        self, name: str, label: str, version: int | None, *, server_poll_seconds: float = 1.0, steady_s: float = 0.0
    ) -> None:
        """Poll until ``label`` answers with ``version`` (None: until it answers with none), or fail.

        A label move is read by the server at its next config poll, so the wait
        lasts up to ``timeout`` but never less than ``server_poll_seconds``.
        With ``steady_s``, every answer for that long in a row must agree (see
        :func:`_steady`).  Raises :class:`ServerNotReadyError` with the last
        thing the server said.
        """
        limit = max(self.timeout, server_poll_seconds) + steady_s
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(limit),
            wait=tenacity.wait_fixed(self.poll_seconds),
            retry=tenacity.retry_if_exception_type(_NotAvailableYet),
        )
        try:
            retrying(_steady(self._check_label, steady_s), name, label, version)
        except tenacity.RetryError as exc:
            wanted = f"version {version}" if version is not None else "no version"
            raise ServerNotReadyError(
                f"{name} label {label!r} did not answer with {wanted} within {limit:g} s "
                f"({exc.last_attempt.exception()})"
            ) from None

    def _check_label(self, name: str, label: str, version: int | None) -> None:
        try:
            actual = self.label_version(name, label)
        except (ServerUnreachableError, ServerNotReadyError) as exc:
            raise _NotAvailableYet(str(exc)) from None
        if actual != version:
            raise _NotAvailableYet(f"label {label!r} answers with {'version ' + str(actual) if actual else 'none'}")

    def status(self, name: str, *, version: int | None = None, label: str | None = None) -> tuple[int, Any]:
        path = f"/v1/models/{name}" + (f"/versions/{version}" if version is not None else "")
        path += f"/labels/{label}" if label is not None else ""
        return self.request("GET", path)

    def wait_available(self, name: str, *, version: int, label: str | None = None, steady_s: float = 0.0) -> None:
        """Poll until the server reports ``version`` (through ``label`` if given) AVAILABLE, or fail.

        Raises :class:`ServerNotReadyError` after ``timeout`` (plus ``steady_s``)
        seconds with the last thing the server said, or at once when the server
        reports that it tried and failed to load the version (state END with an
        error).  With ``steady_s``, every answer for that long in a row must
        say AVAILABLE (see :func:`_steady`).
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.timeout + steady_s),
            wait=tenacity.wait_fixed(self.poll_seconds),
            retry=tenacity.retry_if_exception_type(_NotAvailableYet),
        )
        try:
            retrying(_steady(self._check_available, steady_s), name, version, label)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            via = f" through label {label!r}" if label else ""
            raise ServerNotReadyError(
                f"{name} version {version} was not AVAILABLE{via} within {self.timeout + steady_s:g} s ({last})"
            ) from None

    def _check_available(self, name: str, version: int, label: str | None) -> None:
        """Return when AVAILABLE; raise :class:`_NotAvailableYet` (retried) or :class:`ServerNotReadyError` (final)."""
        try:
            # Through a label the status lists only the labelled version, which must be ``version``.
            code, body = self.status(name, version=None if label else version, label=label)
        except ServerUnreachableError as exc:
            raise _NotAvailableYet(f"cannot reach the server: {exc.__cause__ or exc}") from None
        if code != 200 or not isinstance(body, Mapping):
            raise _NotAvailableYet(f"HTTP {code}: {body.get('error') if isinstance(body, Mapping) else body}")
        entries = body.get("model_version_status") or []
        entry = next((e for e in entries if str(e.get("version")) == str(version)), None)
        if entry is None:
            shown = [f"{e.get('version')}={e.get('state')}" for e in entries]
            raise _NotAvailableYet(f"the server reports {', '.join(shown) or 'no versions'}")
        if entry.get("state") == "AVAILABLE":
            return
        status = entry.get("status") or {}
        if entry.get("state") == "END" and status.get("error_code", "OK") != "OK":
            raise ServerNotReadyError(f"the server could not load version {version}: {status.get('error_message')}")
        raise _NotAvailableYet(f"version {version} is {entry.get('state')}")


def _steady(check: Callable[..., None], steady_s: float) -> Callable[..., None]:
    """``check`` that passes only once it has passed at every poll for ``steady_s`` seconds in a row.

    Behind a Service, each replica re-reads ``models.config`` on its own
    schedule (TF Serving's ``--model_config_file_poll_wait_seconds``).  The
    first answer that agrees comes after the file was written; once answers
    have agreed for one poll interval after it, every replica has read the
    file, and one that still disagreed was seen (every disagreeing answer
    starts the window again).
    """
    agreeing_since: float | None = None

    def attempt(*args: Any) -> None:
        nonlocal agreeing_since
        try:
            check(*args)
        except _NotAvailableYet:
            agreeing_since = None
            raise
        now = time.monotonic()
        agreeing_since = now if agreeing_since is None else agreeing_since
        if now - agreeing_since < steady_s:
            raise _NotAvailableYet(
                f"the answers agreed for {now - agreeing_since:.1f} of {steady_s:g} s (one config poll, so that "
                "every replica has read models.config)"
            )

    return attempt
