"""Count the server processes a test run starts: ``python -m pytest -q -p tests.support.servercount``.

A server is one launch of ``runtime serve`` (its master; Gunicorn's workers and the model engine
belong to it), of azmlinfsrv, or of tritonserver (direct or managed), anywhere below pytest: started
by a fixture, by a benchmark the test runs, by a shell command in a README, or by the runtime itself.
A thread samples /proc every 100 ms, which no server outlives unseen (each takes longer to import or
boot: the shortest, a `runtime serve` that refuses its arguments, lives about 300 ms), and keeps only
processes that descend from this pytest. The total and the count per test
module are printed at the end of the run, and written as JSON to ``$SERVER_COUNT_FILE`` when it is set,
with every launch's test and command line (``launches``).
Under pytest-xdist each worker samples below itself and the controller adds the workers' counts up.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

# Relative: benchmarks/suite.py loads this package from a copy.
from .processes import ProcessTable, below, read_proc_file

# Every 20 ms the four xdist processes' samplers cost the suite about 34 CPU-seconds and 18 s of its wall time,
# which benchmarks/suite.py then counted against it; every 100 ms they count the same 40 launches at no
# measurable cost (240 against 244 CPU-seconds without the counter).
INTERVAL_S = 0.1


def server_kind(argv: list[str]) -> str | None:
    """``runtime``, ``azmlinfsrv`` or ``tritonserver`` when ``argv`` launches that server, else None."""
    if not argv:
        return None
    names = [Path(arg).name for arg in argv[:3]]
    if names[0] == "tritonserver":
        return "tritonserver"
    # By file name: the launcher, or azmlinfsrv itself; a venv's python whose folder is named after
    # azmlinfsrv (pip installing into the benchmark's venv) is no server.
    if any("azmlinfsrv" in name for name in names):
        return "azmlinfsrv"
    if "runtime" in names and "serve" in argv[1:4]:
        return "runtime"
    if names[0].startswith("python") and argv[1:3] == ["-m", "runtime.cli"] and "serve" in argv[3:5]:
        return "runtime"
    return None


Key = tuple[int, str]  # (pid, start time): a pid is reused, this pair is not
Launch = tuple[str, str, list[str]]  # a server's kind, the test that started it, its command line


def launches(
    root: int,
    table: Mapping[int, tuple[int, str]],
    argv_of: Callable[[int], list[str] | None],
    known: dict[Key, str],
) -> dict[Key, str]:
    """The server launches in ``table`` (pid -> (parent, start time)) below ``root`` not in ``known`` yet.

    ``known`` remembers every server process seen so far (by kind), and this adds the new ones to it. A
    process whose parent is a server of the same kind belongs to that server (Gunicorn's workers are forks
    of the master, with its command line). The parent's kind comes from ``known`` when it was seen before: a
    master just killed is a zombie whose command line reads empty, while its workers, about to follow
    it, still show it as their parent and still read as ``runtime serve``. Such a fork is read again while it
    belongs to its parent: the master's fork that runs a managed tritonserver reads as ``runtime serve``
    until its exec, and as a launch of tritonserver after it (whose own forks then belong to it).
    """
    parents = {pid: parent for pid, (parent, _) in table.items()}
    kinds: dict[int, str] = {}
    for pid in below(root, parents):
        key = (pid, table[pid][1])
        kind = known.get(key)
        if kind is None:
            # Read every time until it is a server: a child forked to run a server execs it later.
            argv = argv_of(pid)
            kind = server_kind(argv) if argv else None
        if kind is not None:
            kinds[pid] = kind
    for pid, kind in list(kinds.items()):
        if kinds.get(parents[pid]) == kind and (argv := argv_of(pid)):  # empty: exiting, keep what it was
            now = server_kind(argv)
            if now is None:
                del kinds[pid]  # it exec'd something else (Triton's python-backend stub)
                known.pop((pid, table[pid][1]), None)
            elif now != kind:
                kinds[pid] = now
    new: dict[Key, str] = {}
    for pid, kind in kinds.items():
        key = (pid, table[pid][1])
        if known.get(key) == kind:
            continue
        known[key] = kind
        if kinds.get(parents[pid]) != kind:
            new[key] = kind
    return new


def read_argv(pid: int) -> list[str] | None:
    cmdline = read_proc_file(pid, "cmdline")
    if cmdline is None:
        return None
    return [arg.decode(errors="replace") for arg in cmdline.split(b"\0")[:-1]]


class Sampler:
    """Polls /proc for server processes below ``root`` until stopped."""

    def __init__(
        self,
        root: int,
        table: Callable[[], Mapping[int, tuple[int, str]]] | None = None,
        argv_of: Callable[[int], list[str] | None] = read_argv,
    ) -> None:
        self.root = root
        self.table = table or ProcessTable()
        self.argv_of = argv_of
        self.known: dict[Key, str] = {}  # every server process seen, workers included
        self.seen: dict[Key, Launch] = {}  # the launches: (pid, start time) -> (kind, test, argv)
        self.test = "(collection)"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="servercount", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.sample()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self.sample()

    def sample(self) -> None:
        for key, kind in launches(self.root, self.table(), self.argv_of, self.known).items():
            self.seen[key] = (kind, self.test, self.argv_of(key[0]) or [])


SAMPLER = Sampler(os.getpid())
DIR_ENV = "SERVER_COUNT_DIR"  # where xdist's workers leave their counts for the controller


def _is_controller_of_workers(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    if _is_controller_of_workers(config):
        os.environ[DIR_ENV] = tempfile.mkdtemp(prefix="servercount-")


def pytest_sessionstart(session: pytest.Session) -> None:
    # Under xdist each worker counts below itself; the controller adds them up.
    if not _is_controller_of_workers(session.config):
        SAMPLER.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    SAMPLER.test = nodeid


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        SAMPLER.stop()
        name = session.config.workerinput["workerid"]
        (Path(os.environ[DIR_ENV]) / f"{name}.json").write_text(json.dumps(list(SAMPLER.seen.values())))


def by_kind(seen: list[Launch]) -> Counter[str]:
    return Counter(kind for kind, _, _ in seen)


def by_module(seen: list[Launch]) -> Counter[str]:
    return Counter(test.split("::")[0] for _, test, _ in seen)


def report(seen: list[Launch]) -> dict[str, object]:
    """What ``$SERVER_COUNT_FILE`` holds: the total, the counts by kind, module and test, and every launch."""
    return {
        "total": len(seen),
        "kinds": dict(by_kind(seen)),
        "modules": dict(by_module(seen)),
        "tests": dict(Counter(test for _, test, _ in seen)),
        "launches": [{"kind": kind, "test": test, "argv": argv} for kind, test, argv in sorted(seen)],
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seen: list[Launch]
    if _is_controller_of_workers(terminalreporter.config):
        seen = [
            (kind, test, argv)
            for f in sorted(Path(os.environ[DIR_ENV]).glob("*.json"))
            for kind, test, argv in json.loads(f.read_text())
        ]
    else:
        SAMPLER.stop()
        seen = list(SAMPLER.seen.values())
    kinds = by_kind(seen)
    terminalreporter.section("server processes started")
    terminalreporter.write_line(f"total: {len(seen)} ({', '.join(f'{k} {n}' for k, n in kinds.most_common())})")
    for module, count in by_module(seen).most_common():
        terminalreporter.write_line(f"{count:4d}  {module}")
    path = os.environ.get("SERVER_COUNT_FILE")
    if path:
        Path(path).write_text(json.dumps(report(seen), indent=1) + "\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_controller_of_workers(config):
        shutil.rmtree(os.environ.pop(DIR_ENV), ignore_errors=True)
