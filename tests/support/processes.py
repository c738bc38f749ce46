"""The process table from /proc: who is below whom, and who is still alive."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROC = Path("/proc")


def process_table() -> dict[int, tuple[int, str]]:
    """Every process now: pid -> (parent pid, start time in clock ticks since boot)."""
    table: dict[int, tuple[int, str]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


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
