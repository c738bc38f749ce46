"""Overload and faults, the runtime and azmlinfsrv 1.5.1 side by side: the figures of docs/reliability.md.

    python -m benchmarks.faults                 # every scenario, both servers (about 4 minutes on 2 cores)
    python -m benchmarks.faults --only overload # one scenario (overload, disconnect, sigkill, poison, drain,
                                                #   memory, recycle)

Every scenario starts fresh servers on free loopback ports, runs the same script
(tests/scripts/faults/score.py: run() sleeps as asked and returns its pid) and prints
one line per server. Figures are ratios and counts measured in the same run: compare
them across servers, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.faults import FAULTS, closed_loop, kill, percentile, rss_mib, wait_for
from tests.support.processes import children
from tests.support.servers import REPO, ServerProcess, free_port, runtime_argv
from tests.support.venvs import AZMLINFSRV_REQUIREMENTS, ensure_venv

LAUNCHER = REPO / "tests" / "support" / "azmlinfsrv_launcher.py"
SCORE = FAULTS / "score.py"
LOGS = Path(tempfile.mkdtemp(prefix="faults-bench-"))
RETRY_AFTER_S = 1.0  # overloaded clients wait as the runtime's Retry-After says


@contextlib.contextmanager
def server(system: str, flags: dict[str, str], env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``system`` is "runtime" or "azmlinfsrv"; ``flags`` use the runtime's names (workers, concurrency...)."""
    port = free_port()
    env = dict(env or {})
    if system == "runtime":
        argv = runtime_argv("serve", "--entry", str(SCORE), *(x for k, v in flags.items() for x in (f"--{k}", v)))
    else:
        python = ensure_venv("azmlinfsrv", AZMLINFSRV_REQUIREMENTS)
        argv = [str(python), str(LAUNCHER), "--entry_script", str(SCORE), "--port", str(port)]
        env["WORKER_COUNT"] = flags.get("workers", "1")
    if system == "runtime":
        argv += ["--port", str(port)]
    proc = ServerProcess(argv, port, LOGS / f"{system}-{port}.log", env={"RUNTIME_ACCESS_LOG": "false", **env})
    proc.start(timeout=120)
    try:
        yield proc
    finally:
        proc.stop()


def master_pid(proc: ServerProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def workers(proc: ServerProcess, count: int) -> list[int]:
    """Gunicorn's workers (azmlinfsrv's launcher is the Gunicorn master itself)."""
    wait_for(lambda: len(children(master_pid(proc))) >= count, 60)
    return children(master_pid(proc))


def row(name: str, system: str, **figures: Any) -> None:
    cells = "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"{name:10} {system:11} {cells}", flush=True)


def overload(system: str) -> None:
    """Capacity 8 requests in flight (run() sleeps 50 ms); 8 clients, then 80 (10x).

    Shed clients wait RETRY_AFTER_S (as Retry-After says), or only 50 ms (impatient clients).
    """
    flags = {"workers": "8"} if system == "azmlinfsrv" else {"concurrency": "8", "max-concurrent-requests": "8"}
    body = {"sleep": 0.05}
    with server(system, flags) as proc:
        url = proc.url + "/score"
        asyncio.run(closed_loop(url, 8, 2, body))  # warm-up
        calm = asyncio.run(closed_loop(url, 8, 8, body))
        base = percentile(calm.ok_ms, 99)
        for backoff in (RETRY_AFTER_S, 0.05):
            busy = asyncio.run(closed_loop(url, 80, 8, body, backoff=backoff))
            row(
                "overload",
                f"{system} backoff={backoff}s",
                unloaded_p99_ms=base,
                admitted_p99_ms=percentile(busy.ok_ms, 99),
                p99_ratio=percentile(busy.ok_ms, 99) / base,
                shed_p99_ms=percentile(busy.shed_ms, 99),
                ok_per_s=len(busy.ok_ms) / 8,
                shed=len(busy.shed_ms),
                errors=sum(busy.errors.values()),
            )
            if system == "azmlinfsrv":
                break  # it sheds nothing: the backoff never applies


def disconnect(system: str) -> None:
    """One thread (one sync worker): one client stays for 2 s, 20 give up after 0.3 s. How many run() calls?"""
    calls = LOGS / f"calls-{system}-{time.monotonic_ns()}"
    flags = {"workers": "1"} if system == "azmlinfsrv" else {"concurrency": "1"}
    with server(system, flags, env={"FAULT_CALLS": str(calls)}) as proc:

        async def scenario() -> int:
            async with httpx.AsyncClient(timeout=30) as client:
                stay = asyncio.ensure_future(client.post(proc.url + "/score", json={"id": "stay", "sleep": 2}))
                await asyncio.sleep(0.3)

                async def leave(i: int) -> None:
                    with contextlib.suppress(httpx.TimeoutException):
                        await client.post(proc.url + "/score", json={"id": f"left-{i}", "sleep": 0.2}, timeout=0.3)

                await asyncio.gather(*(leave(i) for i in range(20)))
                return (await stay).status_code

        status = asyncio.run(scenario())
        time.sleep(6)  # whatever is still queued runs now (20 x 0.2 s)
        ran = calls.read_text().split() if calls.exists() else []
    row(
        "disconnect", system, staying_status=status, departed=20, departed_computed=len([c for c in ran if c != "stay"])
    )


def sigkill(system: str, max_age: str = "2") -> None:
    """2 workers, 8 keep-alive clients; SIGKILL one worker at 3 s. Requests lost; when the new one serves."""
    flags = {"workers": "2"} if system == "azmlinfsrv" else {"workers": "2", "keepalive-max-age": max_age}
    with server(system, flags) as proc:
        first = workers(proc, 2)
        victim = first[0]
        load = closed_loop(proc.url + "/score", 8, 15, {"sleep": 0.02}, events=[(3, lambda: kill(victim))])
        result = asyncio.run(load)
        new = [pid for pid in children(master_pid(proc)) if pid not in first]
    shares = result.share_after(new[0], 3.0) if new else []
    fair = next((at for at, share in shares if share >= 0.25), None)
    late = [share for at, share in shares if 5 <= at < 12]
    label = system if system == "azmlinfsrv" else f"{system} age={max_age}"
    row(
        "sigkill",
        label,
        lost=sum(result.errors.values()) + sum(n for s, n in result.statuses.items() if s >= 500),
        new_worker_fair_after_s=fair if fair is not None else "never",
        new_worker_share_5_12s=sum(late) / len(late) if late else 0.0,
    )


def poison(system: str) -> None:
    """Timeout 1 s, 8 threads (8 sync workers): 8 run() calls stuck for 60 s, then 10 s of normal traffic."""
    flags = {"workers": "8"} if system == "azmlinfsrv" else {"concurrency": "8"}
    with server(system, flags, env={"SCORING_TIMEOUT_MS": "1000"}) as proc:

        async def stick() -> list[int]:
            async with httpx.AsyncClient(timeout=5) as client:
                sends = [client.post(proc.url + "/score", json={"sleep": 60}) for _ in range(8)]
                results = await asyncio.gather(*sends, return_exceptions=True)
                return [r.status_code if isinstance(r, httpx.Response) else 0 for r in results]

        stuck = asyncio.run(stick())
        result = asyncio.run(closed_loop(proc.url + "/score", 4, 10, {}, timeout=5))
    total = sum(result.statuses.values()) + sum(result.errors.values())
    row(
        "poison",
        system,
        stuck_answers=",".join(map(str, sorted(set(stuck)))),
        later_ok=result.statuses.get(200, 0),
        later_failed=total - result.statuses.get(200, 0),
    )


def drain(system: str) -> None:
    """20 requests in flight (1 s each) when the master gets SIGTERM: how many are answered?"""
    flags = {"workers": "1"} if system == "azmlinfsrv" else {}
    with server(system, flags) as proc:

        async def scenario() -> list[int]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
                sends = [asyncio.ensure_future(client.post(proc.url + "/score", json={"sleep": 1})) for _ in range(20)]
                await asyncio.sleep(0.4)
                assert proc.proc is not None
                proc.proc.send_signal(signal.SIGTERM)
                results = await asyncio.gather(*sends, return_exceptions=True)
                return [r.status_code if isinstance(r, httpx.Response) else 0 for r in results]

        statuses = asyncio.run(scenario())
    row("drain", system, in_flight=20, answered=statuses.count(200))


def memory(system: str, cap_mib: int | None = None) -> None:
    """16 concurrent JSON bodies of 16 MiB: the worker's RSS growth (sampled every 20 ms) and the answers."""
    mib = 1024 * 1024
    flags = {"workers": "1"} if system == "azmlinfsrv" else {}
    if cap_mib:
        flags["max-body-bytes-in-flight"] = str(cap_mib * mib)
    body = json.dumps({"sleep": 0.5, "pad": "x" * (16 * mib)}).encode()
    with server(system, flags) as proc:
        [worker] = workers(proc, 1)
        before = rss_mib(worker)
        peak = before

        async def burst() -> list[int]:
            nonlocal peak
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=16)) as client:
                headers = {"content-type": "application/json"}
                sends = [
                    asyncio.ensure_future(client.post(proc.url + "/score", content=body, headers=headers))
                    for _ in range(16)
                ]
                while not all(s.done() for s in sends):
                    peak = max(peak, rss_mib(worker))
                    await asyncio.sleep(0.02)
                return [s.result().status_code if not s.exception() else 0 for s in sends]

        statuses = asyncio.run(burst())
    label = f"{system} cap={cap_mib}MiB" if cap_mib else system
    row("memory", label, rss_growth_mib=peak - before, ok=statuses.count(200), shed=statuses.count(429))


def recycle(system: str) -> None:
    """--max-requests 50 (+ jitter 10), 2 workers, 4 keep-alive clients for 10 s: requests lost to recycling."""
    if system == "azmlinfsrv":
        row("recycle", system, note="no max-requests option")
        return
    with server(system, {"workers": "2", "max-requests": "50", "max-requests-jitter": "10"}) as proc:
        result = asyncio.run(closed_loop(proc.url + "/score", 4, 10, {}))
    row(
        "recycle",
        system,
        ok=result.statuses.get(200, 0),
        lost=sum(result.errors.values()) + sum(n for s, n in result.statuses.items() if s != 200),
        workers_seen=len({pid for _, pid in result.served}),
    )


SCENARIOS: dict[str, Callable[[str], None]] = {
    "overload": overload,
    "disconnect": disconnect,
    "sigkill": sigkill,
    "poison": poison,
    "drain": drain,
    "memory": memory,
    "recycle": recycle,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--system", choices=["runtime", "azmlinfsrv"], action="append")
    args = parser.parse_args()
    print(f"logs in {LOGS}")
    for name in args.only or list(SCENARIOS):
        for system in args.system or ["runtime", "azmlinfsrv"]:
            SCENARIOS[name](system)
            if name == "sigkill" and system == "runtime":
                sigkill(system, max_age="0")
            if name == "memory" and system == "runtime":
                memory(system, cap_mib=64)


if __name__ == "__main__":
    main()
