"""Temporary folders named for their process (runtime/scratch.py): a gone process's are removed, others kept."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runtime import scratch
from runtime.http.server import METRICS_PREFIX as PREFIX
from runtime.http.server import SERVE_PREFIX


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_owned_folder_is_named_for_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what tempfile.gettempdir() answers
    folder = Path(scratch.owned_folder(PREFIX))
    assert folder.parent == tmp_path and folder.is_dir()
    assert folder.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert not scratch.owner_gone(folder, PREFIX)


def test_only_folders_of_gone_processes_are_removed(tmp_path: Path) -> None:
    dead = gone_pid()
    stale = tmp_path / f"{PREFIX}{dead}-abc"
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{PREFIX}xyz"  # an older server's name, without its pid: not ours to judge
    a_file = tmp_path / f"{PREFIX}{dead}-file"
    other = tmp_path / f"{SERVE_PREFIX}{dead}-ghi"  # another prefix: left to its own call
    for folder in (stale, live, unnamed, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    a_file.write_bytes(b"x")
    scratch.remove_stale(PREFIX, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, unnamed, a_file, other))
