"""The server counter's rule (tests/support/servercount.py), on process tables written out by hand."""

from __future__ import annotations

import os
import subprocess
import time

from tests.support.processes import ProcessTable, process_table
from tests.support.servercount import Key, Launch, Sampler, launches, read_argv, report, server_kind

PYTEST = 100
SERVE = ["/venv/bin/runtime", "serve", "--port", "5001"]
TRITON = ["/opt/tritonserver/bin/tritonserver", "--model-repository", "/m"]
AZML = ["/venvs/azmlinfsrv/bin/python", "/repo/tests/support/azmlinfsrv_launcher.py", "--port", "5002"]


def count(table: dict[int, tuple[int, str]], argv: dict[int, list[str]], known: dict[Key, str]) -> dict[Key, str]:
    return launches(PYTEST, table, argv.get, known)


def test_server_kinds_by_command_line() -> None:
    assert server_kind(SERVE) == "runtime"
    assert server_kind(["/usr/bin/python3.11", "-m", "runtime.cli", "serve", "--entry", "s.py"]) == "runtime"
    assert server_kind(TRITON) == "tritonserver"
    assert server_kind(AZML) == "azmlinfsrv"
    assert server_kind(["/venv/bin/runtime", "check", "--model-dir", "m"]) is None
    # pip installing into the benchmark's azmlinfsrv venv is no server.
    assert server_kind(["/venvs/azmlinfsrv-bench/bin/python", "-m", "pip", "install", "x"]) is None
    assert server_kind([]) is None


def test_a_master_and_its_workers_are_one_server_and_a_managed_triton_another() -> None:
    table = {200: (PYTEST, "1"), 201: (200, "2"), 202: (200, "2"), 203: (200, "3")}
    argv = {200: SERVE, 201: SERVE, 202: SERVE, 203: TRITON}
    known: dict[Key, str] = {}
    assert count(table, argv, known) == {(200, "1"): "runtime", (203, "3"): "tritonserver"}
    assert count(table, argv, known) == {}  # the next sample: nothing new


def test_workers_of_a_killed_master_are_not_new_servers() -> None:
    """A SIGKILLed master is a zombie (its command line reads empty) until pytest reaps it; its workers,
    about to die with it, still name it as their parent and still read as ``runtime serve``."""
    known: dict[Key, str] = {}
    assert count({200: (PYTEST, "1"), 201: (200, "2")}, {200: SERVE, 201: SERVE}, known) == {(200, "1"): "runtime"}
    after_kill = {200: (PYTEST, "1"), 201: (200, "2"), 202: (200, "5")}  # 202: a worker first seen now
    assert count(after_kill, {200: [], 201: SERVE, 202: SERVE}, known) == {}
    # Gone: the workers, reparented outside pytest, are no longer below it.
    assert count({201: (1, "2"), 202: (1, "5")}, {201: SERVE, 202: SERVE}, known) == {}


def test_a_child_that_execs_a_server_later_counts_once_and_a_reused_pid_again() -> None:
    known: dict[Key, str] = {}
    forked = {200: (PYTEST, "1")}
    assert count(forked, {200: ["/usr/bin/python3.11", "-m", "pytest"]}, known) == {}  # before its exec
    assert count(forked, {200: SERVE}, known) == {(200, "1"): "runtime"}
    assert count(forked, {200: SERVE}, known) == {}
    assert count({200: (PYTEST, "9")}, {200: SERVE}, known) == {(200, "9"): "runtime"}  # a new process, same pid


def test_a_fork_of_a_server_that_execs_another_server_is_a_launch_and_its_forks_are_not() -> None:
    """runtime serve's master restarts its managed tritonserver: a fork of the master (read as ``runtime serve``
    before its exec) becomes tritonserver, whose forks for its python-backend stubs read as tritonserver until
    they exec the stub. One launch, whichever of these moments the samples catch."""
    known: dict[Key, str] = {}
    assert count({200: (PYTEST, "1")}, {200: SERVE}, known) == {(200, "1"): "runtime"}
    forked = {200: (PYTEST, "1"), 203: (200, "3")}
    assert count(forked, {200: SERVE, 203: SERVE}, known) == {}  # before its exec: the master's
    stub_fork = {**forked, 204: (203, "4")}
    assert count(stub_fork, {200: SERVE, 203: TRITON, 204: TRITON}, known) == {(203, "3"): "tritonserver"}
    stub = ["/backends/python/triton_python_backend_stub", "model.py"]
    assert count(stub_fork, {200: SERVE, 203: TRITON, 204: stub}, known) == {}
    assert count(stub_fork, {200: SERVE, 203: [], 204: stub}, known) == {}  # exiting: still the same server


def test_servers_outside_pytest_are_not_counted() -> None:
    table = {200: (PYTEST, "1"), 300: (1, "1"), 301: (300, "2")}
    argv = {200: ["bash", "-c", "runtime serve &"], 300: SERVE, 301: TRITON}
    assert count(table, argv, {}) == {}
    table[201] = (200, "3")  # the shell's server
    assert count(table, {**argv, 201: SERVE}, {}) == {(201, "3"): "runtime"}


def test_a_sampler_keeps_each_launchs_test_and_command_line() -> None:
    table = {200: (PYTEST, "1")}
    sampler = Sampler(PYTEST, lambda: table, {200: SERVE, 201: SERVE, 300: TRITON}.get)
    sampler.test = "tests/test_x.py::test_y"
    sampler.sample()
    table.update({201: (200, "2"), 300: (PYTEST, "3")})  # a worker of the first server, and a second server
    sampler.test = "tests/test_x.py::test_z"
    sampler.sample()
    assert list(sampler.seen.values()) == [
        ("runtime", "tests/test_x.py::test_y", SERVE),
        ("tritonserver", "tests/test_x.py::test_z", TRITON),
    ]


def test_read_argv_reads_a_live_process_and_none_once_it_is_gone() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while read_argv(child.pid) != ["sleep", "30"] and time.monotonic() < deadline:
            time.sleep(0.01)  # until the fork has exec'd sleep (it reads as pytest before)
        assert read_argv(child.pid) == ["sleep", "30"]
    finally:
        child.kill()
        child.wait()
    assert read_argv(child.pid) is None


def test_the_report_counts_by_kind_module_and_test_and_lists_every_launch() -> None:
    seen: list[Launch] = [
        ("runtime", "tests/test_a.py::test_1", SERVE),
        ("tritonserver", "tests/test_a.py::test_1", TRITON),
        ("azmlinfsrv", "tests/test_b.py::test_2[x]", AZML),
    ]
    assert report(seen) == {
        "total": 3,
        "kinds": {"runtime": 1, "tritonserver": 1, "azmlinfsrv": 1},
        "modules": {"tests/test_a.py": 2, "tests/test_b.py": 1},
        "tests": {"tests/test_a.py::test_1": 2, "tests/test_b.py::test_2[x]": 1},
        "launches": [
            {"kind": "azmlinfsrv", "test": "tests/test_b.py::test_2[x]", "argv": AZML},
            {"kind": "runtime", "test": "tests/test_a.py::test_1", "argv": SERVE},
            {"kind": "tritonserver", "test": "tests/test_a.py::test_1", "argv": TRITON},
        ],
    }


def test_the_process_table_read_again_sees_new_processes_and_drops_gone_ones() -> None:
    table = ProcessTable()
    before = table()
    assert before[os.getpid()][0] == os.getppid()
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert table()[child.pid] == process_table()[child.pid]  # (parent, start time), as a full read gives
        assert table()[child.pid][0] == os.getpid()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in table()
