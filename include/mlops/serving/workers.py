"""The worker threads that parse, run and answer API requests, off the event loop.

A plain :class:`concurrent.futures.ThreadPoolExecutor` awaited through
``loop.run_in_executor``: the hop there and back is the whole cost, where
Starlette's ``run_in_threadpool`` (anyio) adds a capacity limiter, a cancel
scope and a context copy to each call (about 30 µs per request on the 2-core
benchmark machine).  As many threads as anyio's default limiter allows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

MAX_THREADS = 40  # anyio's default thread limiter, which run_in_threadpool used


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
