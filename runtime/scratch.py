"""Temporary folders named for the process that owns them (``<prefix><pid>-...``).

A server killed with SIGKILL (or by the OOM killer) cannot remove its folders; the next server that
starts removes those whose owner is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def owned_folder(prefix: str) -> str:
    """A new folder in the temporary directory, named for this process."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def owner_gone(path: Path, prefix: str) -> bool:
    """Whether ``path`` is named ``<prefix><pid>-...`` for a process that no longer exists.

    A pid that another process took since is kept: a folder left for later is safe, one removed under a
    running server is not.
    """
    pid = path.name[len(prefix) :].split("-", 1)[0]
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


def remove_stale(prefix: str, root: str | None = None) -> None:
    """Remove the folders ``<prefix><pid>-...`` in ``root`` (the temporary directory) whose process is gone."""
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        if path.is_dir() and owner_gone(path, prefix):
            shutil.rmtree(path, ignore_errors=True)
