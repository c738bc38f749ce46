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
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from runtime.http.v2codec import HEADER_LENGTH, serialize_bytes
from runtime.serving.datatypes import wire_to_numpy

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


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    values = np.asarray(latencies) * 1000
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean())}


async def run_step(
    target: Target,
    concurrency: int,
    duration: float,
    warmup: float,
    on_progress: Callable[[float], None] | None = None,
) -> Step:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=max(120.0, duration * 4))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    cpu_start: list[float] = []

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                status = "error"
                try:
                    async with session.post(target.url, data=target.body(), headers=target.headers) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as ex:
                    status = type(ex).__name__
                done = time.perf_counter()
                # Count what completes inside the window, whenever it was sent (as perf_analyzer does),
                # so that steps whose latency exceeds the window still measure throughput.
                if measure_from <= done <= stop_at:
                    if status == "200":
                        latencies.append(done - sent)
                    else:
                        errors[status] += 1

        async def clock() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu_start.append(time.process_time())
            while (now := time.perf_counter()) < stop_at:
                if on_progress is not None:
                    on_progress(min(1.0, (now - measure_from) / duration))
                await asyncio.sleep(0.2)

        await asyncio.gather(clock(), *(client() for _ in range(concurrency)))
    cpu = time.process_time() - (cpu_start[0] if cpu_start else 0.0)
    completed = len(latencies) + sum(errors.values())
    return Step(
        concurrency=concurrency,
        requests=completed,
        duration_s=duration,
        throughput=len(latencies) / duration,
        latency_ms=percentiles(latencies),
        errors=dict(errors),
        client_cpu_percent=100 * cpu / duration,
        client_cpu_us_per_request=1e6 * cpu / completed if completed else 0.0,
    )


async def sweep(
    target: Target,
    concurrencies: Sequence[int],
    duration: float,
    warmup: float,
    show_progress: bool = True,
) -> list[Step]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    steps: list[Step] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    ) as progress:
        for concurrency in concurrencies:
            task = progress.add_task(f"concurrency {concurrency:>4}", total=1.0, status="warming up")

            def update(fraction: float, task: Any = task) -> None:
                progress.update(task, completed=fraction, status="measuring")

            step = await run_step(target, concurrency, duration, warmup, update)
            errors = sum(step.errors.values())
            progress.update(
                task,
                completed=1.0,
                status=f"{step.throughput:8.1f} req/s  p50 {step.latency_ms['p50']:7.2f} ms  "
                f"p99 {step.latency_ms['p99']:7.2f} ms  errors {errors}",
            )
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
