"""The process table from /proc: who is below whom, and who is still alive."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

PROC = Path("/proc")


def process_table() -> dict[int, tuple[int, str]]:
    """Every process now: pid -> (parent pid, start time in clock ticks since boot).

    Read with os.listdir and os.read, not pathlib's glob and read_text, which cost twice the CPU.
    """
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir(PROC):
        if name.isdigit() and (entry := _stat(int(name))) is not None:
            table[int(name)] = entry
    return table


def _stat(pid: int) -> tuple[int, str] | None:
    stat = read_proc_file(pid, "stat")
    if stat is None:
        return None
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[1]), fields[19].decode()


class ProcessTable:
    """:func:`process_table` read again and again: only the processes new since the last read are read.

    The server counter (servercount.py) reads the table every 100 ms in each xdist process; reading every
    process's stat each time cost the suite about 40 CPU-seconds, which its timing then counted. A pid is
    not reused within one interval (the kernel hands pids out in turn), so a known pid is the same process.
    """

    def __init__(self) -> None:
        self._table: dict[int, tuple[int, str]] = {}

    def __call__(self) -> dict[int, tuple[int, str]]:
        table: dict[int, tuple[int, str]] = {}
        for name in os.listdir(PROC):
            if not name.isdigit():
                continue
            pid = int(name)
            entry = self._table.get(pid) or _stat(pid)
            if entry is not None:
                table[pid] = entry
        self._table = table
        return table


def read_proc_file(pid: int, name: str) -> bytes | None:
    """/proc/PID/NAME in one read (stat and cmdline fit in 64 KiB), or None once the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Gunicorn's workers of a master), sorted."""
    return sorted(child for child, (parent, _) in process_table().items() if parent == pid)


def comm(pid: int) -> str:
    """The process's name (what ``ps -o comm`` shows); "" once it is gone."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process has used so far; 0 once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def below(root: int, parents: Mapping[int, int]) -> set[int]:
    """The pids under ``root`` in a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    return below(pid, {child: parent for child, (parent, _) in process_table().items()})


def alive(pids: set[int]) -> set[int]:
    """The pids that still exist and are not zombies."""
    living = set()
    for pid in pids:
        try:
            state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """The pids still alive after waiting up to ``seconds`` for them to exit."""
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)
