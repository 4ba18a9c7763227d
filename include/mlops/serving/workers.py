"""Where API requests are parsed, run and answered: worker threads, or the event loop for quick small ones.

The worker threads are a plain :class:`concurrent.futures.ThreadPoolExecutor`
awaited through ``loop.run_in_executor``: the hop there and back is the whole
cost, where Starlette's ``run_in_threadpool`` (anyio) adds a capacity limiter,
a cancel scope and a context copy to each call (about 30 µs per request on the
2-core benchmark machine).  As many threads as anyio's default limiter allows.

Even that hop costs two thread wake-ups, about 0.1 ms per request on that
machine, as much as the rest of the server's own work on a one-row predict.
:class:`InlineGate` decides which predicts may skip it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from include.mlops.serving.loaders import LoadedVersion

T = TypeVar("T")

MAX_THREADS = 40  # anyio's default thread limiter, which run_in_threadpool used

# A predict runs on the event loop only with a body up to this size (a few dozen rows of a small model)...
INLINE_MAX_BODY_BYTES = 8 * 1024
# ...to a version whose small predicts take at most this long on average, parse to answer...
INLINE_MAX_MICROS = 1000.0
# ...once this many of them have been timed.
INLINE_AFTER_CALLS = 8
# The weight of the latest call in that average: a single slow call (the machine busy elsewhere) moves it by
# an eighth of its time, a model that turns slow takes it over the limit within a few calls.
_LATEST_WEIGHT = 1 / 8


class WorkerThreads:
    """A thread pool started on first use and shut down by :meth:`stop` (a later call starts a new one)."""

    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._max_threads, thread_name_prefix="api-worker")
                pool = self._pool
        return pool

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread; its result or its exception."""
        return await asyncio.get_running_loop().run_in_executor(self._executor(), fn, *args)

    def stop(self) -> None:
        """Let the running calls finish in their threads; new ones start a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


class InlineGate:
    """Which predicts run on the event loop itself instead of hopping to a worker thread and back.

    Only a small body (at most ``max_body_bytes``, so its parsing is cheap) to a version whose small
    predicts take at most ``max_micros`` on average (a moving average over the calls timed so far, at
    least ``after`` of them): a status request or another client then waits about that long behind it.
    Big bodies, and versions whose calls are slow or not yet timed, stay in the worker threads, so they
    never stall the event loop; a version that turns slow goes back there within a few calls.  So does
    every call to a version while one of its calls runs in a worker thread: a TFLite interpreter takes
    one call at a time, and the event loop must not wait for a big call to finish (and while several
    clients' predicts to a version are in the worker threads, new ones join them there).

    The times are kept on the loaded version (``LoadedVersion.small_calls`` and ``small_call_micros``),
    so a new version starts in the worker threads.  Calls in several threads may update them at once and
    lose an update; that only moves the average by one call.
    """

    def __init__(
        self,
        max_body_bytes: int = INLINE_MAX_BODY_BYTES,
        max_micros: float = INLINE_MAX_MICROS,
        after: int = INLINE_AFTER_CALLS,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_micros = max_micros
        self.after = after

    def allows(self, loaded: LoadedVersion, body_bytes: int) -> bool:
        """Whether a predict of ``body_bytes`` to ``loaded`` may run on the event loop."""
        return (
            body_bytes <= self.max_body_bytes
            and loaded.small_calls >= self.after
            and loaded.small_call_micros <= self.max_micros
            and loaded.worker_calls == 0
        )

    def record(self, loaded: LoadedVersion, body_bytes: int, micros: float) -> None:
        """One predict's time, parse to answer, wherever it ran (small bodies only: the gate decides on those)."""
        if body_bytes > self.max_body_bytes:
            return
        if loaded.small_calls == 0:
            loaded.small_call_micros = micros
        else:
            loaded.small_call_micros += (micros - loaded.small_call_micros) * _LATEST_WEIGHT
        loaded.small_calls = min(loaded.small_calls + 1, self.after)
