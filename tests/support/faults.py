"""Fault-injection helpers shared by tests/test_faults.py and benchmarks/faults.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.support.servers import REPO

FAULTS = REPO / "tests" / "scripts" / "faults"


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def in_flight(url: str) -> float:
    """Requests the server at ``url`` has admitted and not answered yet, all workers (/metrics)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith("runtime_requests_in_progress "))


def wait_in_flight(url: str, count: int, timeout: float = 30) -> bool:
    """Whether ``count`` requests are in flight at ``url`` within ``timeout``: a test that signals the server
    with requests in flight waits for them, as a loaded machine can take longer than any fixed wait to hand
    connections in the listen backlog to the workers (such a connection is closed unanswered on SIGTERM)."""
    return wait_for(lambda: in_flight(url) >= count, timeout, interval=0.05)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class LoadResult:
    """What a closed-loop load saw: statuses, latencies by status class, answers by worker pid and time."""

    statuses: Counter[int] = field(default_factory=Counter)
    ok_ms: list[float] = field(default_factory=list)
    shed_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # (seconds since start, worker pid) for every 200
    served: list[tuple[float, int]] = field(default_factory=list)

    def share_after(self, pid: int, start: float, window: float = 1.0) -> list[tuple[float, float]]:
        """The fraction of answers ``pid`` gave in each ``window`` from ``start`` on."""
        buckets: dict[int, Counter[bool]] = {}
        for at, who in self.served:
            if at >= start:
                buckets.setdefault(int((at - start) / window), Counter())[who == pid] += 1
        return [(k * window, c[True] / max(1, sum(c.values()))) for k, c in sorted(buckets.items())]


async def closed_loop(
    url: str,
    clients: int,
    seconds: float,
    body: Any,
    timeout: float = 30.0,
    events: Sequence[tuple[float, Any]] = (),
    backoff: float = 0.0,
) -> LoadResult:
    """``clients`` keep-alive clients, each sending ``body`` as JSON back to back for ``seconds``.

    ``events``: (second, callable) pairs run during the load (a SIGKILL, say). ``backoff``: seconds a
    client waits after a 429/503 before it sends again. aiohttp, not httpx: httpx's pool costs so much
    CPU at 80 connections that the client, not the server, would set the latency.
    """
    result = LoadResult()
    started = time.monotonic()
    stop = started + seconds
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            sent = time.monotonic()
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    answer = await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as ex:
                result.errors[type(ex).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            elapsed = (time.monotonic() - sent) * 1000
            result.statuses[response.status] += 1
            if response.status == 200:
                result.ok_ms.append(elapsed)
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    result.served.append((sent - started, int(json.loads(answer)["pid"])))
            elif response.status in (429, 503):
                result.shed_ms.append(elapsed)
                await asyncio.sleep(backoff)

    async def fire() -> None:
        for at, action in events:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            action()

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        await asyncio.gather(fire(), *(client(session) for _ in range(clients)))
    return result


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
