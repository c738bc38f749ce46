"""Where user code runs: sync functions in a bounded thread pool, async ones on the loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Executor:
    """A thread pool sized to the requests one worker keeps in flight.

    Cancelling the awaiting task (a scoring timeout) answers the request at
    once; the thread itself cannot be killed and finishes in the background.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score")
        self._abandoned = 0
        self._lock = threading.Lock()

    @property
    def abandoned(self) -> int:
        """Threads still running a call whose caller gave up (timed out or left): capacity lost."""
        return self._abandoned

    async def run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        ctx = contextvars.copy_context()
        future = self._pool.submit(ctx.run, func, *args, **kwargs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # A call that has not started is dropped here (nothing new starts for a departed caller);
            # one that runs keeps its thread until it returns.
            if not future.cancel():
                with self._lock:
                    self._abandoned += 1
                future.add_done_callback(self._release)
            raise

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self._abandoned -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
