"""Overload and faults against real Gunicorn workers: admission, cancellation, recycling, SIGKILL, drain, memory.

Tests whose settings agree share a module server (each counts what it caused, from before to after); a test
that recycles or stops its server's workers comes after the others on that server. A SIGKILLed worker's
replacement and SIGTERM's drain of two workers are tests/test_scoring.py's, on its two-worker flags server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faults import FAULTS, closed_loop, rss_mib, wait_for, wait_in_flight
from tests.support.processes import children
from tests.support.servers import ServerPool, ServerProcess

pytestmark = pytest.mark.slow

SCORE = str(FAULTS / "score.py")
MIB = 1024 * 1024
# One worker, admission limits, four threads and a 2 s scoring timeout: the overload and large-body tests (the
# admitted requests end well within the timeout), then the threads held by timed-out calls, which recycle it.
ADMISSION = ("--entry", SCORE, "--max-concurrent-requests", "4", "--max-body-bytes-in-flight", str(24 * MIB),
             "--concurrency", "4", "--timeout-ms", "2000")  # fmt: skip
# One worker, one thread, every run() call recorded: departed clients, and memory recycling (which the
# other test does not notice: it counts calls by id and cancellations from before to after).
ONE_THREAD = ("--entry", SCORE, "--concurrency", "1", "--max-worker-memory", "300")
# Two workers, an async run() and a 1.5 s scoring timeout: a blocked event loop (two requests, far from
# --max-requests), then recycling by --max-requests under load (its run() answers {} at once, as score.py's).
ASYNC_RECYCLING = ("--entry", str(FAULTS / "async_block.py"), "--workers", "2",
                   "--max-requests", "40", "--max-requests-jitter", "10")  # fmt: skip
ASYNC_ENV = {"SCORING_TIMEOUT_MS": "1500"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    with ServerPool(tmp_path_factory.mktemp("faults")) as servers:
        yield servers


@pytest.fixture(scope="module")
def calls_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calls") / "calls"


@pytest.fixture
def one_thread(pool: ServerPool, calls_file: Path) -> ServerProcess:
    return pool.get(*ONE_THREAD, env={"FAULT_CALLS": str(calls_file)})


def metric(server_url: str, name: str) -> float:
    """The sum of a metric's samples (all label values) from /metrics."""
    text = httpx.get(server_url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_overload_gets_fast_429_with_retry_after(pool: ServerPool) -> None:
    server = pool.get(*ADMISSION)
    rejected = 'runtime_requests_rejected_total{reason="max_concurrent_requests"}'
    before = metric(server.url, rejected)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(server.url + "/score", json={"sleep": 1}) for _ in range(12)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 4 + [429] * 8
    shed = [r for r in responses if r.status_code == 429]
    for response in shed:
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/json"
        assert "max_concurrent_requests 4" in response.json()["message"]
        assert response.elapsed.total_seconds() < 0.9  # answered before any admitted request finished
    assert metric(server.url, rejected) - before == 8


def test_departed_clients_requests_are_never_computed(one_thread: ServerProcess, calls_file: Path) -> None:
    server = one_thread
    calls_before = calls_file.stat().st_size if calls_file.exists() else 0
    cancelled = "runtime_requests_cancelled_total"
    client_closed = 'runtime_http_requests_total{method="POST",route="/score",status="499"}'
    before = metric(server.url, cancelled), metric(server.url, client_closed)

    async def scenario() -> int:
        async with httpx.AsyncClient(timeout=30) as client:
            staying = asyncio.ensure_future(client.post(server.url + "/score", json={"id": "stay", "sleep": 2.5}))
            assert await asyncio.to_thread(wait_in_flight, server.url, 1)  # the one thread is busy: what follows queues
            posts = [client.post(server.url + "/score", json={"id": f"left-{i}"}) for i in range(8)]
            leaving = [asyncio.ensure_future(post) for post in posts]
            # The clients leave once the server holds all 8 (under load, a fixed wait had some leave before
            # their request arrived): cancelling a request closes its connection.
            assert await asyncio.to_thread(wait_in_flight, server.url, 9, 10)
            assert not any(task.done() for task in leaving), "expected the clients to leave before an answer"
            for task in leaving:
                task.cancel()
            await asyncio.gather(*leaving, return_exceptions=True)
            return (await staying).status_code

    assert asyncio.run(scenario()) == 200
    time.sleep(1.0)  # anything still queued would run now
    assert calls_file.read_bytes()[calls_before:].decode().split() == ["stay"]
    assert wait_for(lambda: metric(server.url, cancelled) - before[0] == 8, 5)
    assert metric(server.url, client_closed) - before[1] == 8


def test_async_run_blocking_the_loop_is_reported_and_timed_out(pool: ServerPool) -> None:
    server = pool.get(*ASYNC_RECYCLING, env=ASYNC_ENV)
    with httpx.Client(timeout=60) as client:
        started = time.monotonic()
        blocked = client.post(server.url + "/score", json={"block": 30})
        elapsed = time.monotonic() - started
        after = client.post(server.url + "/score", json={})
    assert blocked.status_code == 500 and blocked.json()["message"] == "Scoring timeout after 1500 ms"
    assert elapsed < 10
    assert after.status_code == 200
    assert "The event loop has been blocked" in server.log() and "async_block.py" in server.log()
    assert metric(server.url, "runtime_event_loop_stalls_total") >= 1


def test_max_requests_recycles_workers_without_losing_requests(pool: ServerPool) -> None:
    server = pool.get(*ASYNC_RECYCLING, env=ASYNC_ENV)  # after the blocked-loop test: it recycles the workers
    result = asyncio.run(closed_loop(server.url + "/score", 4, 8, {}))
    pids = {pid for _, pid in result.served}
    assert len(pids) >= 4, pids  # both first workers were replaced at least once
    assert set(result.statuses) == {200} and not result.errors, (result.statuses, result.errors)


def test_sigint_to_the_master_alone_stops_every_worker_at_once(pool: ServerPool) -> None:
    """`kill -INT <master>` (a supervisor's stop signal), not a terminal's Ctrl-C to the whole group: Gunicorn
    asks its workers to quit with SIGQUIT, and they stop at once instead of at the master's SIGKILL 30 s later."""
    server = pool.take(*ASYNC_RECYCLING, env=ASYNC_ENV)  # stopped here, after its recycling test
    master = server.proc
    assert master is not None
    # The recycling test before this one may have left a worker between its exit and its replacement.
    assert wait_for(lambda: len(children(master.pid)) == 2, 30)
    workers = children(master.pid)
    assert httpx.post(server.url + "/score", json={}, timeout=10).status_code == 200
    started = time.monotonic()
    server.send_signal(signal.SIGINT)
    assert server.wait_exit(25) == 130  # the CLI's Ctrl-C status
    assert time.monotonic() - started < 10
    assert "was sent SIGKILL" not in server.log()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_memory_is_recycled_past_max_worker_memory(one_thread: ServerProcess) -> None:
    server = one_thread
    recycled_before = server.log().count("exceeds --max-worker-memory 300 MiB")
    with httpx.Client(timeout=30) as client:
        first = client.post(server.url + "/score", json={"leak_mb": 250}).json()["pid"]
        assert client.post(server.url + "/score", json={"leak_mb": 100}).status_code == 200
        assert wait_for(lambda: server.log().count("exceeds --max-worker-memory 300 MiB") > recycled_before, 10)
        assert "RSS" in server.log()
        server.wait_ready()
        assert wait_for(lambda: client.post(server.url + "/score", json={}).json()["pid"] != first, 30)


def test_burst_of_large_bodies_stays_within_the_bytes_in_flight_cap(pool: ServerPool) -> None:
    server = pool.get(*ADMISSION)
    master = server.proc
    assert master is not None
    [worker] = children(master.pid)
    body = json.dumps({"sleep": 0.5, "pad": "x" * (8 * MIB)}).encode()
    before = rss_mib(worker)
    peak = before

    async def burst() -> list[int]:
        nonlocal peak
        async with httpx.AsyncClient(timeout=60) as client:
            sends = [
                asyncio.ensure_future(
                    client.post(server.url + "/score", content=body, headers={"content-type": "application/json"})
                )
                for _ in range(12)
            ]
            while not all(s.done() for s in sends):
                peak = max(peak, rss_mib(worker))
                await asyncio.sleep(0.02)
            return [s.result().status_code for s in sends]

    statuses = asyncio.run(burst())
    assert statuses.count(200) >= 2 and statuses.count(429) >= 6, statuses
    # 12 bodies of 8 MiB would cost ~100 MiB held at once (plus parsing); the cap admits 2.
    assert peak - before < 80, (before, peak)


def test_threads_held_by_timed_out_calls_recycle_the_worker(pool: ServerPool) -> None:
    server = pool.get(*ADMISSION)  # last of its tests: its worker is recycled here
    master = server.proc
    assert master is not None
    [worker] = children(master.pid)
    with httpx.Client(timeout=30) as client:
        stuck = [client.post(server.url + "/score", json={"sleep": 60}) for _ in range(2)]
        assert [r.status_code for r in stuck] == [500, 500]
        assert all("Scoring timeout" in r.json()["message"] for r in stuck)
        # Half the pool is held: the worker takes itself out and Gunicorn starts a fresh one.
        assert wait_for(lambda: children(master.pid) not in ([], [worker]), 30)
        server.wait_ready()
        answers = [client.post(server.url + "/score", json={}) for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 5
    assert all(r.json()["pid"] != worker for r in answers)
    assert "Recycling worker" in server.log() and "threads still run calls that timed out" in server.log()
