"""A child process the runtime starts, watches from a thread, restarts while it is wanted, and stops."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from runtime.errors import StartupError

logger = logging.getLogger("runtime.serving")


class SupervisedProcess:
    """Subclasses start the process in :meth:`_spawn` (setting ``proc``) and wait for it in :meth:`wait_ready`.

    The watcher thread both notices an exit and spawns the replacement: PR_SET_PDEATHSIG, which the
    children use to die with us, fires when the thread that forked them exits, so it must live as long.
    The child leads a process group of its own (``os.setpgrp`` before exec): what it started in turn
    (Triton's python-backend stubs) is killed with the group once the child is gone, so that nothing it
    left behind outlives it, even when it was killed before it could stop them.
    """

    label = "process"
    restart_delay = 1.0  # seconds before the first restart; doubled after each failure, up to 30

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._owner = os.getpid()

    @property
    def owned(self) -> bool:
        """Whether this is the process that started it (not a child forked since, a Gunicorn worker)."""
        return os.getpid() == self._owner

    def _spawn(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def _wait_for(self, ready: Callable[[], bool], wait_s: float, interval: float) -> None:
        """Poll ``ready()`` until it holds; a StartupError if the process exits or ``wait_s`` passes first."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StartupError(f"{self.label} exited with code {self.proc.returncode} while starting (see its log)")
            if ready():
                return
            time.sleep(interval)
        raise StartupError(f"{self.label} was not ready within {wait_s:.0f} s")

    def _supervise(self) -> None:
        self._watcher = threading.Thread(target=self._watch, daemon=True, name=f"{self.label}-supervisor")
        self._watcher.start()

    def _watch(self) -> None:
        delay = self.restart_delay
        while not self._stopping.is_set():
            assert self.proc is not None
            code = self.proc.wait()  # Gunicorn's master may reap it first: then the code reads 0
            if self._stopping.is_set():
                return
            _kill_group(self.proc.pid)
            self._after_exit()
            self.restarts += 1
            logger.error(
                "%s (pid %d) exited with code %s; restarting it in %.1f s", self.label, self.proc.pid, code, delay
            )
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
                self.wait_ready()
                delay = self.restart_delay
            except (StartupError, OSError) as ex:  # OSError: a fork out of memory or processes; tried again later
                logger.error("Restarting %s failed: %s", self.label, ex)
                delay = min(max(delay * 2, 0.5), 30)

    def _stop_process(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; no restart after this.

        Only in the process that started it: a Gunicorn worker that exits (Ctrl-C's quick shutdown, --max-requests)
        unwinds through the master's code, and would stop the managed Triton under the master and the other workers."""
        if not self.owned:
            return
        self._stopping.set()
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        _kill_group(proc.pid)
        self._after_exit()

    def _after_exit(self) -> None:
        """Clean up what the process left behind once it and its group are gone (subclasses)."""


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the process group the child led (nothing, when it stopped its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
