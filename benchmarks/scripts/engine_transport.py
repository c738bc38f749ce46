"""What one request costs on the engine's path alone, without HTTP: EngineClient -> runtime-engine -> back,
against the same model in process (the per-worker design's ModelRunner), for the tiny linear model.

    python benchmarks/scripts/engine_transport.py [--requests 5000] [--rounds 2]

Per concurrency: requests/s, p50, and CPU microseconds per request of the engine process and of this
(client) process. With the in-process runner the client's CPU is the whole cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from plugins.onnxruntime_backend import config_from_engine  # noqa: E402
from runtime.serving.engine.client import EngineClient  # noqa: E402
from runtime.serving.runner import load_runners  # noqa: E402
from tests.support import models  # noqa: E402
from tests.support.processes import cpu_seconds  # noqa: E402


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(call: Callable[[], Awaitable[object]], concurrency: int, requests: int) -> tuple[float, float]:
    """(seconds, p50 seconds) for ``requests`` calls from ``concurrency`` closed-loop clients."""
    latencies: list[float] = []

    async def client() -> None:
        for _ in range(requests // concurrency):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, sorted(latencies)[len(latencies) // 2]


async def measure(args: argparse.Namespace, work: Path, engine: subprocess.Popen[bytes], address: str) -> None:
    x = {"x": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)}
    client = EngineClient(address, 16 << 20)
    await client.connect(60)
    config = config_from_engine(client.models[0])
    runner = load_runners(str(work), 1)[0]
    runner.start()

    async def via_engine() -> object:
        return await client.infer(config, "1", x)

    async def in_process() -> object:
        return await runner.submit(x)

    for _ in range(args.rounds):
        for concurrency in (1, 32):
            for name, call in (("engine", via_engine), ("in process", in_process)):
                await load(call, concurrency, 300)  # warm up
                engine_before, own_before = cpu_seconds(engine.pid), own_cpu_s()
                seconds, p50 = await load(call, concurrency, args.requests)
                engine_us = (cpu_seconds(engine.pid) - engine_before) * 1e6 / args.requests
                own_us = (own_cpu_s() - own_before) * 1e6 / args.requests
                print(
                    f"c={concurrency:2d} {name:10s} {args.requests / seconds:7.0f} req/s  p50 {p50 * 1e3:.3f} ms  "
                    f"CPU/request: engine {engine_us:4.0f} us, client {own_us:4.0f} us",
                    flush=True,
                )
    await client.close()
    await runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-transport-") as tmp:
        work = Path(tmp)
        models.make_linear(work / "triton" / "tiny" / "1" / "model.onnx")
        (work / "triton" / "tiny" / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
        (work / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")  # the engine's, as runtime serve sets it
        address = f"@engine-transport-{os.getpid()}"
        command = [sys.executable, "-m", "runtime.serving.engine.process", "--address", address]
        engine = subprocess.Popen([*command, "--model-dir", str(work), "--log-level", "WARNING"], cwd=REPO)
        try:
            import uvloop

            uvloop.run(measure(args, work, engine, address))
        finally:
            engine.terminate()
            engine.wait()


if __name__ == "__main__":
    main()
