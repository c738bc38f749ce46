"""Watching a worker for the faults that would otherwise poison it.

- Threads held by calls that timed out: when they hold half the pool, the worker is recycled
  (readiness off, in-flight requests answered, then Gunicorn replaces it).
- Memory: RSS above ``--max-worker-memory`` recycles the worker the same way.
- A blocked event loop (an ``async def run()`` calling ``time.sleep``): a thread measures the
  loop's lag, logs the stack that blocks it and counts the stall. When the stall outlasts the
  scoring timeout and the loop is blocked in the entry script's own async run() code, that call
  is timed out the way Ctrl+C interrupts Python: a signal handler raises ScoringTimeout in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import CodeType, FrameType

from runtime import metrics
from runtime.errors import ScoringTimeout
from runtime.executor import Executor
from runtime.http.health import WorkerHealth

logger = logging.getLogger("runtime.watchdog")

CHECK_INTERVAL_S = 0.2
RECYCLE_GRACE_S = 1.0
LOOP_BEAT_S = 0.1
LOOP_STALL_S = 1.0  # a loop blocked this long is reported
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """This process's resident set size (Linux), or None where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


async def monitor(health: WorkerHealth, executor: Executor, max_memory_mb: int) -> None:
    """Recycle the worker when abandoned calls hold half its threads, or when it uses too much memory.

    A worker marked for recycling (here, or by --max-requests) serves with ``Connection: close`` for
    RECYCLE_GRACE_S, so that busy keep-alive clients leave cleanly, then shuts down gracefully.
    """
    threshold = max(1, executor.threads // 2)
    while health.poisoned is None:
        await asyncio.sleep(CHECK_INTERVAL_S)
        if executor.abandoned >= threshold:
            health.recycle(
                f"{executor.abandoned} of {executor.threads} threads still run calls that timed out",
                "abandoned_threads",
            )
        elif max_memory_mb:
            rss = rss_bytes()
            if rss is not None and rss > max_memory_mb * 1024 * 1024:
                health.recycle(
                    f"RSS {rss // (1024 * 1024)} MiB exceeds --max-worker-memory {max_memory_mb} MiB", "memory"
                )
    await asyncio.sleep(RECYCLE_GRACE_S)
    health.terminate()


class LoopWatchdog:
    """A thread that notices when the event loop stops turning."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, run_code: CodeType | None) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.run_code = run_code  # the entry script's async run(), the only code a timeout may interrupt
        self.last_beat = time.monotonic()
        self.stalls = 0
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._beat_handle: asyncio.TimerHandle | None = None

    def start(self, interrupt: bool) -> None:
        """Begin watching; with ``interrupt`` (main thread only), time out blocking async run() calls."""
        if interrupt and self.run_code is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR2, self._on_interrupt)
        else:
            self.run_code = None
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._beat_handle is not None:
            self._beat_handle.cancel()

    def _beat(self) -> None:
        self.last_beat = time.monotonic()
        self._beat_handle = self.loop.call_later(LOOP_BEAT_S, self._beat)

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(LOOP_BEAT_S):
            lag = time.monotonic() - self.last_beat
            if lag < LOOP_STALL_S:
                reported = 0.0
                continue
            if reported == 0.0:
                self.stalls += 1
                metrics.LOOP_STALLS.inc()
                logger.error(
                    "The event loop has been blocked for %.1f s: every request of this worker waits. Blocking "
                    "code must not run in async functions (use a sync run(), or asyncio.to_thread). Stack:\n%s",
                    lag,
                    self._main_stack(),
                )
                reported = lag
            if self.run_code is not None and lag > self.timeout_s and self._main is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pthread_kill(self._main, signal.SIGUSR2)

    def _main_stack(self) -> str:
        frame = sys._current_frames().get(self._main or 0)
        return "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "(unknown)"

    def _on_interrupt(self, sig: int, frame: FrameType | None) -> None:
        """In the main thread: raise ScoringTimeout if the loop is still blocked in the script's async run()."""
        if time.monotonic() - self.last_beat <= self.timeout_s or frame is None or self.run_code is None:
            return
        if frame.f_code.co_filename != self.run_code.co_filename or not _inside(frame, self.run_code):
            return  # blocked in library code: interrupting it could leave shared state broken
        logger.error("async run() blocked the event loop past the scoring timeout: interrupting it")
        raise ScoringTimeout(int(self.timeout_s * 1000))


def _inside(frame: FrameType | None, code: CodeType) -> bool:
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def install(
    loop: asyncio.AbstractEventLoop, timeout_ms: int, run: Callable[..., object] | None, interrupt: bool
) -> LoopWatchdog:
    code = getattr(inspect.unwrap(run), "__code__", None) if run is not None else None
    watchdog = LoopWatchdog(loop, timeout_ms / 1000, code)
    watchdog.start(interrupt)
    return watchdog
