"""SupervisedProcess, the watcher behind the managed Triton and the model engine, with a plain child process."""

from __future__ import annotations

import subprocess
import sys
import time

from runtime.serving.supervised import SupervisedProcess


class Sleeper(SupervisedProcess):
    """A child that sleeps; the first ``failures`` spawns after the first fail as a fork does out of memory."""

    label = "sleeper"
    restart_delay = 0.05

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.spawned = 0

    def _spawn(self) -> None:
        if self.spawned and self.failures:
            self.failures -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")  # fork: EAGAIN
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.spawned += 1

    def wait_ready(self) -> None:
        pass


def test_a_restart_whose_fork_fails_is_retried_not_given_up_for_good() -> None:
    """The watcher thread died of the OSError: the child was never restarted and its clients got 503s for good."""
    sleeper = Sleeper(failures=2)
    sleeper._spawn()
    sleeper._supervise()
    first = sleeper.proc
    assert first is not None
    first.kill()
    deadline = time.monotonic() + 10
    while sleeper.spawned < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert sleeper.spawned == 2 and sleeper.failures == 0
        assert sleeper.proc is not first and sleeper.proc is not None and sleeper.proc.poll() is None
        assert sleeper._watcher is not None and sleeper._watcher.is_alive()
    finally:
        sleeper._stop_process(5)
