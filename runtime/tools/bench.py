"""``runtime bench``: a closed-loop load generator in the spirit of Triton's perf_analyzer.

For each concurrency of the sweep, that many async clients send requests back
to back over reused connections for ``duration`` seconds (after ``warmup``),
against a ``/score`` URL (a request file or a payload generator) or a v2 model
(binary tensors, the way tritonclient sends them). Each step reports req/s,
p50/p90/p99 latency, errors by status and the client's own CPU, so the
client's overhead is on the record.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import json
import os
import platform
import re
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from runtime.serving.datatypes import HEADER_LENGTH, serialize_bytes, wire_to_numpy

DEFAULT_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Target:
    """What to send: ``body()`` gives each request's body (a fixed one, or a generator's)."""

    url: str
    body: Callable[[], bytes]
    headers: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass
class Step:
    concurrency: int
    requests: int
    duration_s: float
    throughput: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    client_cpu_percent: float
    client_cpu_us_per_request: float
    # One response body (cut at ERROR_SAMPLE_BYTES) per error status, so a report says *why* requests failed.
    error_samples: dict[str, str] = field(default_factory=dict)
    client_processes: int = 1
    # Model executions per batch-size range during the step (warm-up included), from the server's
    # /metrics (runtime_batch_size, both backends); empty when the server has none.
    batch_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Raw:
    """What one client process measured in one step; steps of several processes are merged from these."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    cpu_s: float = 0.0

    def merge(self, other: Raw) -> None:
        self.latencies += other.latencies
        self.errors.update(other.errors)
        for status, body in other.samples.items():
            self.samples.setdefault(status, body)
        self.cpu_s += other.cpu_s

    def step(self, concurrency: int, duration: float, processes: int = 1) -> Step:
        completed = len(self.latencies) + sum(self.errors.values())
        return Step(
            concurrency=concurrency,
            requests=completed,
            duration_s=duration,
            throughput=len(self.latencies) / duration,
            latency_ms=percentiles(self.latencies),
            errors=dict(self.errors),
            client_cpu_percent=100 * self.cpu_s / duration,
            client_cpu_us_per_request=1e6 * self.cpu_s / completed if completed else 0.0,
            error_samples=dict(self.samples),
            client_processes=processes,
        )


ERROR_SAMPLE_BYTES = 300
# A refused or reset connection fails in microseconds; without a pause a client would spin a core.
BACKOFF_S = (0.01, 1.0)


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    values = np.asarray(latencies) * 1000
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean())}


def _describe(ex: BaseException) -> str:
    if isinstance(ex, aiohttp.ClientConnectorError):
        return f"connection error: {ex.os_error.strerror or ex}"
    return f"{type(ex).__name__}: {ex}" if str(ex) else type(ex).__name__


async def measure(
    target: Target,
    concurrency: int,
    duration: float,
    warmup: float,
    on_progress: Callable[[float], None] | None = None,
    start: float | None = None,
) -> Raw:
    """``concurrency`` closed-loop clients; what completes in [start + warmup, start + warmup + duration]."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=max(120.0, duration * 4))
    raw = Raw()
    start = time.perf_counter() if start is None else start
    measure_from = start + warmup
    stop_at = measure_from + duration
    cpu_start: list[float] = []

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            backoff = 0.0
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                status, body = "error", ""
                try:
                    async with session.post(target.url, data=target.body(), headers=target.headers) as response:
                        content = await response.read()
                        status = str(response.status)
                        if response.status != 200 and status not in raw.samples:
                            body = content[:ERROR_SAMPLE_BYTES].decode("utf-8", "replace")
                    backoff = 0.0
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as ex:
                    status, body = type(ex).__name__, _describe(ex)
                    backoff = min(max(backoff * 2, BACKOFF_S[0]), BACKOFF_S[1])
                done = time.perf_counter()
                # Count what completes inside the window, whenever it was sent (as perf_analyzer does),
                # so that steps whose latency exceeds the window still measure throughput.
                if measure_from <= done <= stop_at:
                    if status == "200":
                        raw.latencies.append(done - sent)
                    else:
                        raw.errors[status] += 1
                        raw.samples.setdefault(status, body)
                if backoff:
                    await asyncio.sleep(min(backoff, max(0.0, stop_at - time.perf_counter())))

        async def clock() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu_start.append(time.process_time())
            while (now := time.perf_counter()) < stop_at:
                if on_progress is not None:
                    on_progress(min(1.0, (now - measure_from) / duration))
                await asyncio.sleep(0.2)

        await asyncio.gather(clock(), *(client() for _ in range(concurrency)))
    raw.cpu_s = time.process_time() - (cpu_start[0] if cpu_start else 0.0)
    return raw


async def run_step(
    target: Target,
    concurrency: int,
    duration: float,
    warmup: float,
    on_progress: Callable[[float], None] | None = None,
) -> Step:
    raw = await measure(target, concurrency, duration, warmup, on_progress)
    return raw.step(concurrency, duration)


def expected_seconds(concurrencies: Sequence[int], duration: float, warmup: float) -> float:
    return len(concurrencies) * (duration + warmup)


def step_status(step: Step) -> str:
    errors = sum(step.errors.values())
    return (
        f"{step.throughput:.1f} req/s, p50 {step.latency_ms['p50']:.1f} ms, "
        f"p99 {step.latency_ms['p99']:.1f} ms, {errors} errors"
    )


def _progress(show: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        disable=not show,
        transient=False,
        console=Console(stderr=True),
    )


async def sweep(
    target: Target,
    concurrencies: Sequence[int],
    duration: float,
    warmup: float,
    show_progress: bool = True,
) -> list[Step]:
    steps: list[Step] = []
    with _progress(show_progress) as progress:
        for concurrency in concurrencies:
            task = progress.add_task(f"concurrency {concurrency:>4}", total=1.0, status="warming up")

            def update(fraction: float, task: Any = task) -> None:
                progress.update(task, completed=fraction, status="measuring")

            before = await asyncio.to_thread(batch_counts, target.url)
            step = await run_step(target, concurrency, duration, warmup, update)
            step.batch_sizes = batch_ranges(before, await asyncio.to_thread(batch_counts, target.url))
            progress.update(task, completed=1.0, status=step_status(step))
            steps.append(step)
    return steps


BATCH_BUCKET = re.compile(r"^runtime_batch_size_bucket\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def batch_counts(url: str) -> dict[float, float]:
    """Cumulative executions per ``le`` bound of runtime_batch_size, summed over models, from the server of
    ``url``; empty when it has no /metrics (azmlinfsrv, Triton itself)."""
    parts = urllib.parse.urlsplit(url)
    try:
        with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return {}
    counts: dict[float, float] = {}
    for match in BATCH_BUCKET.finditer(text):
        bound = re.search(r'le="([^"]+)"', match.group("labels"))
        if bound:
            le = float(bound.group(1))
            counts[le] = counts.get(le, 0.0) + float(match.group("value"))
    return counts


def batch_ranges(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Executions per batch-size range ("1", "2", "3-4", ...) between two :func:`batch_counts`."""
    ranges: dict[str, int] = {}
    previous_bound, previous_total = 0.0, 0.0
    for bound in sorted(after):
        total = after[bound] - before.get(bound, 0.0)
        count = round(total - previous_total)
        if count > 0 and bound != float("inf"):
            low, high = int(previous_bound) + 1, int(bound)
            ranges[str(high) if low == high else f"{low}-{high}"] = count
        elif count > 0:
            ranges[f">{int(previous_bound)}"] = count
        previous_bound, previous_total = bound, total
    return ranges


# The target a forked client process measures (set before the pool forks; a Target holds a callable).
_CHILD_TARGET: Target | None = None


def _child_step(concurrency: int, duration: float, warmup: float, wall_start: float) -> Raw:
    assert _CHILD_TARGET is not None
    start = time.perf_counter() + (wall_start - time.time())
    return asyncio.run(measure(_CHILD_TARGET, concurrency, duration, warmup, start=start))


def sweep_processes(
    target: Target,
    concurrencies: Sequence[int],
    duration: float,
    warmup: float,
    processes: int,
    show_progress: bool = True,
) -> list[Step]:
    """The sweep with each step's clients spread over ``processes`` forked client processes."""
    if processes <= 1:
        return asyncio.run(sweep(target, concurrencies, duration, warmup, show_progress))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    global _CHILD_TARGET
    _CHILD_TARGET = target
    steps: list[Step] = []
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context) as pool, _progress(show_progress) as progress:
        for concurrency in concurrencies:
            task = progress.add_task(f"concurrency {concurrency:>4}", total=1.0, status="warming up")
            shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
            before = batch_counts(target.url)
            wall_start = time.time() + 0.5  # the same instant for every process, after they are all running
            futures = [pool.submit(_child_step, n, duration, warmup, wall_start) for n in shares if n]
            while True:
                _, pending = wait(futures, timeout=0.2)
                measured = time.time() - wall_start - warmup
                if measured > 0:
                    progress.update(task, completed=min(1.0, measured / duration), status="measuring")
                if not pending:
                    break
            raw = Raw()
            for future in futures:
                raw.merge(future.result())
            step = raw.step(concurrency, duration, processes)
            step.batch_sizes = batch_ranges(before, batch_counts(target.url))
            progress.update(task, completed=1.0, status=step_status(step))
            steps.append(step)
    return steps


# -- targets ---------------------------------------------------------------------------------------


def load_generator(spec: str) -> Callable[[], bytes]:
    """``module:function`` (or ``path/to/file.py:function``) returning bytes, called per request."""
    module_name, _, func = spec.partition(":")
    if module_name.endswith(".py"):
        spec_obj = importlib.util.spec_from_file_location("bench_generator", module_name)
        assert spec_obj is not None and spec_obj.loader is not None
        module = importlib.util.module_from_spec(spec_obj)
        spec_obj.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    generator: Callable[[], bytes] = getattr(module, func or "payload")
    return generator


def v2_body(inputs: dict[str, np.ndarray], outputs: Sequence[str] = ()) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor infer request, as tritonclient builds it."""
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    chunks = []
    for name, value in inputs.items():
        raw = serialize_bytes(value) if value.dtype.kind in ("O", "S", "U") else np.ascontiguousarray(value).tobytes()
        datatype = "BYTES" if value.dtype.kind in ("O", "S", "U") else _wire(value.dtype)
        header["inputs"].append(
            {
                "name": name,
                "shape": list(value.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    if outputs:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    json_part = json.dumps(header).encode()
    headers = {HEADER_LENGTH: str(len(json_part)), "Content-Type": "application/octet-stream"}
    return json_part + b"".join(chunks), headers


def _wire(dtype: np.dtype) -> str:
    from runtime.serving.datatypes import numpy_to_wire

    return numpy_to_wire(dtype)


def random_inputs(metadata: dict[str, Any], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors for a model's v2 metadata (-1 dimensions become ``batch`` first, then 8)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in metadata["inputs"]:
        shape = [batch if i == 0 and d == -1 else (8 if d == -1 else d) for i, d in enumerate(spec["shape"])]
        if spec["datatype"] == "BYTES":
            words = np.array([b"alpha", b"beta", b"gamma", b"delta"], dtype=object)
            inputs[spec["name"]] = rng.choice(words, size=shape).astype(object)
        else:
            inputs[spec["name"]] = rng.random(shape).astype(wire_to_numpy(spec["datatype"]))
    return inputs


def v2_target(base_url: str, model: str, batch: int = 1) -> Target:
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/v2/models/{model}", timeout=30) as response:
        metadata = json.loads(response.read())
    body, headers = v2_body(random_inputs(metadata, batch))
    return Target(f"{base_url}/v2/models/{model}/infer", lambda: body, headers, f"v2 {model} (binary tensors)")


# -- output ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def as_json(target: Target, steps: list[Step]) -> str:
    overhead = [s.client_cpu_us_per_request for s in steps if s.requests]
    return json.dumps(
        {
            "target": {"url": target.url, "description": target.description},
            "machine": machine(),
            "client_cpu_us_per_request": float(np.median(overhead)) if overhead else 0.0,
            "steps": [asdict(s) for s in steps],
        },
        indent=2,
    )


def as_csv(steps: list[Step]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["concurrency", "req_per_s", "p50_ms", "p90_ms", "p99_ms", "errors", "client_cpu_percent"])
    for s in steps:
        writer.writerow(
            [
                s.concurrency,
                f"{s.throughput:.2f}",
                f"{s.latency_ms['p50']:.3f}",
                f"{s.latency_ms['p90']:.3f}",
                f"{s.latency_ms['p99']:.3f}",
                sum(s.errors.values()),
                f"{s.client_cpu_percent:.1f}",
            ]
        )
    return out.getvalue()


def error_report(steps: Sequence[Step]) -> str:
    """One line per error status over the sweep: how many, and what the server said."""
    counts: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for step in steps:
        counts.update(step.errors)
        for status, body in step.error_samples.items():
            samples.setdefault(status, body)
    lines = []
    for status, count in counts.most_common():
        lines.append(f"{status} x {count}: {samples.get(status, '').strip() or '(empty body)'}")
    return "\n".join(lines)


def as_table(steps: list[Step]) -> str:
    lines = [
        f"{'concurrency':>11} {'req/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'errors':>8} "
        f"{'client CPU':>10} {'us/req':>8}"
    ]
    for s in steps:
        errors = ",".join(f"{k}:{v}" for k, v in s.errors.items()) or "0"
        lines.append(
            f"{s.concurrency:>11} {s.throughput:>10.1f} {s.latency_ms['p50']:>9.2f} {s.latency_ms['p90']:>9.2f} "
            f"{s.latency_ms['p99']:>9.2f} {errors:>8} {s.client_cpu_percent:>9.0f}% {s.client_cpu_us_per_request:>8.0f}"
        )
    return "\n".join(lines)
