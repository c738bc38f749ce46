"""Temporary folders named for the process that owns them (``<prefix><pid>-...``), locked while it lives.

A server killed with SIGKILL (or by the OOM killer) cannot remove its folders; the next server that
starts removes those whose owner is gone. Gone means that nobody holds the folder's lock (``flock`` on
the folder itself), not that its pid is free: servers in other PID namespaces (containers) may share one
/tmp, where a pid says nothing, and a pid is reused. The lock is released by the kernel when the owner and
its forks (the Gunicorn workers, which use the folder too) have all exited, however they exited; a program
they exec holds it only when given the descriptor (:func:`lock_fd`). systemd-tmpfiles skips locked folders.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

# In each folder: says that the folder is locked while in use (one without it, an older runtime's, is judged
# by its pid).
MARKER = ".owner"

# The locked folders' descriptors, open for the life of this process (forks inherit them; exec does not).
_held: dict[str, int] = {}


def owned_folder(prefix: str, root: str | None = None) -> str:
    """A new folder in ``root`` (the temporary directory), named for this process and locked while it lives."""
    # Created under a hidden name and renamed once locked: a server that cleans up meanwhile never sees
    # the folder without its lock, which it would judge by the pid alone.
    staging = tempfile.mkdtemp(prefix=f".{prefix}{os.getpid()}-", dir=root)
    path = os.path.join(os.path.dirname(staging), os.path.basename(staging)[1:])
    fd = -1
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows the folder yet: at once
        Path(staging, MARKER).touch()
        os.rename(staging, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _held[path] = fd
    return path


def lock_fd(path: str | Path) -> int:
    """The descriptor that holds the lock of a folder from :func:`owned_folder`, to pass to a program that uses
    the folder (``pass_fds``): the folder is then kept while that program runs too."""
    return _held[str(path)]


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

    A folder without the marker (an older runtime's) is judged by its pid, and kept while a process has
    it: a folder left for later is safe, one removed under a running server is not.
    """
    if str(path) in _held:  # this process's own (a second probe of it would drop the lock where flock is emulated)
        return False
    if not (path / MARKER).exists():
        return pid_gone(path.name, prefix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, or not ours to open: not ours to remove
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (or locks unsupported here: keep it)
        return False
    finally:
        os.close(fd)  # the lock, if this took it, goes with it: the owner never locks again
    return True


def remove_stale(prefix: str, root: str | None = None) -> None:
    """Remove the folders ``<prefix><pid>-...`` in ``root`` (the temporary directory) whose owner is gone."""
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        if path.is_dir() and owner_gone(path, prefix):
            shutil.rmtree(path, ignore_errors=True)
