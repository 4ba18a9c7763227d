"""A client that sends production-like predictions to a model's ``stable`` label from a thread, as a user would.

Each request has one row drawn from N(1, 1) per feature; requests go one after the other at about ``rate`` a
second (a late answer delays the next request, no burst follows).  Every failure (a status other than 200, or
no answer) is kept with what came back.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np


class ClientLoop:
    """Predictions on ``<server>/v1/models/<model>/labels/stable:predict``; a context manager runs the thread."""

    def __init__(self, server_url: str, model: str, n_features: int, *, rate: float = 40.0, seed: int = 7) -> None:
        self.url = f"{server_url}/v1/models/{model}/labels/stable:predict"
        self.n_features, self.period, self.seed = n_features, 1.0 / rate, seed
        self.sent = 0
        self.failed: list[str] = []
        self.failed_at: list[float] = []  # time.time() of each failure, in the order of ``failed``
        self.answers: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)

    def _send(self, client: httpx.Client, row: list[float]) -> None:
        try:
            response = client.post(self.url, json={"instances": [row]})
        except httpx.HTTPError as exc:
            self._fail(repr(exc))
        else:
            if response.status_code != 200:
                self._fail(f"{response.status_code}: {response.text[:200]}")
            else:
                self.answers.append(response.json()["predictions"][0][0])
        self.sent += 1

    def _fail(self, what: str) -> None:
        self.failed_at.append(time.time())
        self.failed.append(what)

    def failures_between(self, start: float, end: float) -> int:
        """Failed requests between two ``time.time()`` values."""
        return sum(1 for at in self.failed_at if start <= at <= end)

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        next_at = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                self._send(client, rng.normal(1.0, 1.0, size=self.n_features).round(4).tolist())
                next_at = max(next_at + self.period, time.monotonic())
                self._stop.wait(next_at - time.monotonic())

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
