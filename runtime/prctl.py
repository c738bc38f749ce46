"""What a child process says about itself to Linux: its name, and the signal it gets when its parent dies.

Used by Gunicorn's workers (a dead master), the engine (a dead master) and instance processes (a dead engine)."""

from __future__ import annotations

import contextlib
import ctypes

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def name_and_tie_to_parent(name: bytes | None, death_signal: int) -> None:
    """``name`` (unless None) in /proc/PID/comm (what ``ps -o comm`` and ``pgrep`` see); ``death_signal`` when
    the parent dies, even by SIGKILL.

    The death signal fires when the *thread* that forked this process exits, not only the process.
    """
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no name, no death signal
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if name is not None:
            libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)


def tie_to_parent(death_signal: int) -> None:
    """``death_signal`` when the parent dies; the name stays."""
    name_and_tie_to_parent(None, death_signal)
