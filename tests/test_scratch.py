"""Temporary folders named for their process (runtime/scratch.py): a gone owner's are removed, others kept.

Gone means the folder's lock is free: its pid decides only for folders without one (an older runtime's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime import scratch
from runtime.http.server import METRICS_PREFIX as PREFIX
from runtime.http.server import SERVE_PREFIX
from tests.support.faults import wait_for


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
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # the hidden name it was made under is gone
    assert not scratch.owner_gone(folder, PREFIX)
    scratch.release(folder)
    assert not folder.exists()


# A process that makes an owned folder, forks a child that keeps running (as Gunicorn forks its workers),
# prints the folder's path, and waits for stdin to close.
OWNER = """
import os, sys
from runtime import scratch
path = scratch.owned_folder(sys.argv[1], sys.argv[2])
child = os.fork()
if child == 0:
    os.execvp("sleep", ["sleep", "600"]) if sys.argv[3] == "exec" else sys.stdin.read()
    os._exit(0)
print(path, child, flush=True)
sys.stdin.read()
"""


@contextmanager
def owner(root: Path, child: str = "fork") -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, PREFIX, str(root), child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    path, child_pid = proc.stdout.readline().split()
    try:
        yield proc, Path(path), int(child_pid)
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child_pid), signal.SIGKILL)


def test_a_folder_is_kept_while_its_owner_or_a_fork_of_it_lives(tmp_path: Path) -> None:
    with owner(tmp_path) as (proc, folder, _):
        assert folder.name.startswith(f"{PREFIX}{proc.pid}-")
        scratch.remove_stale(PREFIX, str(tmp_path))
        assert folder.is_dir()
        proc.send_signal(signal.SIGKILL)  # the master, killed: its worker (the fork) still uses the folder
        proc.wait()
        scratch.remove_stale(PREFIX, str(tmp_path))
        assert folder.is_dir()
        assert proc.stdin is not None
        proc.stdin.close()  # the fork ends
        assert wait_for(lambda: scratch.owner_gone(folder, PREFIX), 5)  # a child that ends takes a moment
        scratch.remove_stale(PREFIX, str(tmp_path))
        assert not folder.exists()


def test_a_program_the_owner_execs_does_not_hold_the_folder(tmp_path: Path) -> None:
    """Managed tritonserver is exec'd by the runtime: the lock is the runtime's alone."""
    with owner(tmp_path, "exec") as (proc, folder, child):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: scratch.owner_gone(folder, PREFIX), 5)  # once the child has exec'd
        assert Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep\0")  # which runs on
        scratch.remove_stale(PREFIX, str(tmp_path))
        assert not folder.exists()


def test_the_lock_decides_not_the_pid(tmp_path: Path) -> None:
    """In another PID namespace (a container sharing /tmp) a live owner's pid may be free here, and a gone owner's
    pid may be taken by another process: only the lock says whether the owner lives."""
    with owner(tmp_path) as (_, held, _):
        dead = gone_pid()
        live_elsewhere = tmp_path / f"{PREFIX}{dead}-abc"
        held.rename(live_elsewhere)  # the name of a pid that is free here; its lock is held
        reused = tmp_path / f"{PREFIX}{os.getpid()}-def"  # a pid that is taken here; nobody holds its lock
        reused.mkdir()
        (reused / scratch.MARKER).write_bytes(b"")
        scratch.remove_stale(PREFIX, str(tmp_path))
        assert live_elsewhere.is_dir() and not reused.exists()


def test_only_folders_of_gone_processes_are_removed(tmp_path: Path) -> None:
    dead = gone_pid()
    stale = tmp_path / f"{PREFIX}{dead}-abc"
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"
    # Without a lock file, as an older runtime made them: by the pid.
    unnamed = tmp_path / f"{PREFIX}xyz"  # an older server's name, without its pid: not ours to judge
    a_file = tmp_path / f"{PREFIX}{dead}-file"
    other = tmp_path / f"{SERVE_PREFIX}{dead}-ghi"  # another prefix: left to its own call
    for folder in (stale, live, unnamed, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    a_file.write_bytes(b"x")
    scratch.remove_stale(PREFIX, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, unnamed, a_file, other))


def test_a_folder_that_cannot_be_locked_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(source: str, target: str) -> None:
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(OSError):
        scratch.owned_folder(PREFIX, str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # not even the hidden name it was made under
