"""Temporary folders named for the process that owns them (``<prefix><pid>-...``), locked while it lives.

A server killed with SIGKILL (or by the OOM killer) cannot remove its folders; the next server that
starts removes those whose owner is gone. Gone means that nobody holds the folder's lock (``flock``),
not that its pid is free: servers in other PID namespaces (containers) may share one /tmp, where a pid
says nothing, and a pid is reused. The lock is released by the kernel when the owner and its forks (the
Gunicorn workers, which use the folder too) have all exited, however they exited.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

LOCK = ".owner"  # in each folder; its lock is held for as long as the folder is in use

# The lock files' descriptors, open for the life of this process (forks inherit them; exec does not).
_held: dict[str, int] = {}


def owned_folder(prefix: str, root: str | None = None) -> str:
    """A new folder in ``root`` (the temporary directory), named for this process and locked while it lives."""
    # Created under a hidden name and renamed once locked: a server that cleans up meanwhile never sees
    # the folder without its lock, which it would judge by the pid alone.
    staging = tempfile.mkdtemp(prefix=f".{prefix}{os.getpid()}-", dir=root)
    fd = os.open(os.path.join(staging, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows the file yet: at once
    path = os.path.join(os.path.dirname(staging), os.path.basename(staging)[1:])
    os.rename(staging, path)
    _held[path] = fd
    return path


def release(path: str | Path) -> None:
    """Remove a folder from :func:`owned_folder`, then let its lock go."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _held.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def pid_gone(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``<prefix><pid>-...`` for a pid that no process of this PID namespace has."""
    pid = name[len(prefix) :].split("-", 1)[0]
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


def owner_gone(path: Path, prefix: str) -> bool:
    """Whether nobody holds the lock of folder ``path`` (named ``<prefix><pid>-...``).

    A folder without a lock file (an older runtime's) is judged by its pid, and kept while a process has
    it: a folder left for later is safe, one removed under a running server is not.
    """
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return pid_gone(path.name, prefix)
    except OSError:  # not ours to open: not ours to remove
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # the lock, if this took it, goes with it: the owner never locks again
    return True


def remove_stale(prefix: str, root: str | None = None) -> None:
    """Remove the folders ``<prefix><pid>-...`` in ``root`` (the temporary directory) whose owner is gone."""
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        if path.is_dir() and owner_gone(path, prefix):
            shutil.rmtree(path, ignore_errors=True)
