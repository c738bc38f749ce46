"""Instance processes on and off, in one run: the GIL contention they remove, measured on the CPU.

    python benchmarks/scripts/instance_processes.py [--layers 150] [--workers 2] [--concurrency 32] \\
        [--duration 10] [--rounds 3]

The model is TorchScript with many small operators (``--layers`` x matmul, add, relu on [N, 64]): its
forward releases and retakes the GIL at every operator, as DenseNet-121 does on a GPU. It measures:

1. in this process, on one intra-op thread, a batch's forward alone; beside a process running Python (the
   control: another core busy); in a thread beside a thread running Python, at Python's default and at the
   engine's GIL switch interval (what a model thread meets in the engine, whose event loop serves the
   workers' sockets);
2. ``runtime serve --model-dir`` with ``--workers`` workers, v2 binary tensors, one row per request, at
   ``--concurrency``, with RUNTIME_INSTANCE_PROCESSES=off and =on taking turns for ``--rounds`` rounds:
   requests/s, p50, mean batch, the engine's time per batch (compute, from /metrics) and CPU per request.

It prints each row and the on/off ratios (the median over rounds).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

MODEL = "chain"
WIDTH = 64


def build(root: Path, layers: int, max_batch_size: int) -> Path:
    """A repository with the chain model, dynamic batching, one CPU instance."""
    from runtime.serving.platforms.torchscript import import_torch

    torch = import_torch(MODEL)

    class Chain(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.weights = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.randn(WIDTH, WIDTH, generator=generator) / 8) for _ in range(layers)]
            )

        def forward(self, x: Any) -> Any:
            for weight in self.weights:
                x = torch.relu(x @ weight + 0.01)
            return x

    folder = root / "triton" / MODEL
    (folder / "1").mkdir(parents=True)
    # Traced: the loop unrolls into --layers x 3 operators (the same graph scripting would run, without annotations).
    torch.jit.trace(Chain().eval(), torch.zeros(2, WIDTH)).save(str(folder / "1" / "model.pt"))
    (folder / "config.pbtxt").write_text(
        f'platform: "pytorch_libtorch"\nmax_batch_size: {max_batch_size}\n'
        f'input [{{ name: "x" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n'
        f'output [{{ name: "y" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n'
        "dynamic_batching { }\ninstance_group [{ count: 1 kind: KIND_CPU }]\n"
    )
    return root


def spin(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def forward_ms(repo: Path, batch: int, calls: int) -> dict[str, float]:
    """A batch's forward in ms, on one intra-op thread: alone; beside a process running Python (the other core
    busy: the control); in a thread beside a thread running Python (the other core busy and the GIL shared)."""
    from runtime.serving.platforms import Device, platform_for
    from runtime.serving.repository import load_repository

    config = load_repository(repo)[0]
    instance = platform_for(config).load(config, config.latest_version, Device("cpu"), 1)
    x = {"x": np.random.default_rng(0).standard_normal((batch, WIDTH)).astype(np.float32)}

    def timed() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            instance.run(x)
        return 1e3 * (time.perf_counter() - started) / calls

    for _ in range(5):
        instance.run(x)
    times = {"alone": timed()}
    context = multiprocessing.get_context("spawn")
    stopped = context.Event()
    other = context.Process(target=spin, args=(stopped,))
    other.start()
    time.sleep(0.5)
    times["beside a process running Python"] = timed()
    stopped.set()
    other.join()
    for interval in (0.005, 0.0005):  # Python's default GIL switch interval, and the engine's
        sys.setswitchinterval(interval)
        stop = threading.Event()
        result: list[float] = []
        spinner = threading.Thread(target=spin, args=(stop,))
        runner = threading.Thread(target=lambda out=result: out.append(timed()))
        spinner.start()
        runner.start()
        runner.join()
        stop.set()
        spinner.join()
        times[f"in a thread beside a thread running Python ({1e3 * interval:g} ms switch interval)"] = result[0]
    sys.setswitchinterval(0.005)
    return times


def served(repo: Path, mode: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    from runtime.tools import bench

    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    body, headers = bench.v2_body({"x": x}, ["y"])
    environment = {**env, "RUNTIME_INSTANCE_PROCESSES": mode}
    flags = ["--model-dir", str(repo)]
    server = gpu_check.Server(flags, args.workers, work / f"serve-{mode}.log", environment, MODEL)
    try:
        server.wait_ready(args.start_timeout)
        return gpu_check.load(server, f"/v2/models/{MODEL}/infer", body, headers, args, args.concurrency)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=150)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--calls", type=int, default=200, help="forward calls per in-process measurement")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    args.profile, args.wheels = None, None  # gpu_check.load's options this script does not take
    work = Path(tempfile.mkdtemp(prefix="instance_processes-"))
    env = {**os.environ, "PYTHONPATH": gpu_check.python_path(work, None)}
    repo = build(work / "models", args.layers, args.max_batch_size)
    forward = forward_ms(repo, 16, args.calls)
    print(f"forward of a batch of 16, {args.layers} layers, one intra-op thread, in this process:", flush=True)
    for name, ms in forward.items():
        print(f"  {name:72} {ms:7.2f} ms ({ms / forward['alone']:.2f}x alone)", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    keys = ("images_per_s", "p50_ms", "mean_batch", "compute_ms_per_batch")
    for round_ in range(args.rounds):
        for mode in ("off", "on"):
            row = served(repo, mode, args, work, env)
            rows[mode].append(row)
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in row["cpu_us"].items())
            print(
                f"round {round_ + 1}, instance processes {mode:3}: {row['images_per_s']:7.1f} req/s, "
                f"p50 {row['p50_ms']:6.2f} ms, mean batch {row['mean_batch']:5.1f}, "
                f"{row['compute_ms_per_batch']:6.2f} ms per batch in the engine, CPU us/request: {cpu}, "
                f"errors {row['errors']}",
                flush=True,
            )
    gpu_check.close_pools()
    print(f"\non/off, median of {args.rounds} round(s), {args.workers} workers, c={args.concurrency}:")
    ratios = {k: statistics.median(on[k] / off[k] for on, off in zip(rows["on"], rows["off"], strict=True)
                                   if off[k]) for k in keys}  # fmt: skip
    for key, value in ratios.items():
        print(f"  {key:22} {value:.2f}x")
    return {"forward_ms": forward, "rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
