"""What a child process of the engine's family says about itself to Linux: its name and its death signal."""

from __future__ import annotations

import contextlib
import ctypes

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def name_and_tie_to_parent(name: bytes, death_signal: int) -> None:
    """``name`` in /proc/PID/comm (what ``ps -o comm`` and ``pgrep`` see); ``death_signal`` when the parent dies.

    The death signal fires when the *thread* that forked this process exits, not only the process.
    """
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no name, no death signal
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
