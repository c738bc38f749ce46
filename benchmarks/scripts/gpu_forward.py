"""Why a batch runs slower in the engine than alone: DenseNet-121 TorchScript forward times under four conditions.

    python benchmarks/scripts/gpu_forward.py [--device cpu] [--small] [--seconds 4]

1. one batch size again and again (what gpu_check's device limit measures);
2. batch sizes drawn at random from 1..64 (what the engine's dynamic batcher sends);
3. the same batch size while one process per core runs the example's preprocessing (the workers);
4. the same batch size in a thread while the main thread runs Python (the engine's event loop holds the GIL);
5. the same, the forward in an instance process (RUNTIME_INSTANCE_PROCESSES, what the engine does for GPU
   instances by default), its inputs in shared memory, while this process's threads run Python.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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

Row = tuple[str, float, float]


def timed(run: object, sizes: list[int], xs: dict[int, np.ndarray]) -> tuple[float, float]:
    started = time.perf_counter()
    for b in sizes:
        run({"data_0": xs[b]})  # type: ignore[operator]
    elapsed = time.perf_counter() - started
    return 1e3 * elapsed / len(sizes), sum(sizes) / elapsed


def spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def instance_process_row(config: Any, target: Any, sizes: list[int], xs: dict[int, np.ndarray]) -> Row:
    """The forward through a RemoteInstance, inputs in a registered region (as the workers' arenas are), while
    another thread of this process runs Python: its GIL is not the instance process's."""
    from runtime.serving.engine.arena import Region
    from runtime.serving.engine.remote import REGIONS, RemoteInstance, Request

    remote = RemoteInstance(config, config.latest_version, target, os.cpu_count() or 1)
    remote.wait_ready()
    size = max(a.nbytes for a in xs.values())
    region = Region.create("gpu-forward-inputs", size)
    space = region.view(0, region.size)
    key = REGIONS.add(region.fd, space)
    region.fd = -1  # the registry owns it
    shared = {}
    for b in set(sizes):
        request = Request()
        request["data_0"] = space[: xs[b].nbytes].view(np.float32).reshape(xs[b].shape)
        shared[b] = request
    try:
        for b in set(sizes):
            shared[b]["data_0"][...] = xs[b]
            remote.run_parts([shared[b]])  # every shape once, as above
        stop = threading.Event()
        spinner = threading.Thread(target=spin, args=(stop,))
        spinner.start()
        started = time.perf_counter()
        for b in sizes:
            remote.run_parts([shared[b]])
        elapsed = time.perf_counter() - started
        stop.set()
        spinner.join()
    finally:
        remote.close()
        REGIONS.remove(key)
    label = "fixed batch in an instance process, a thread here running Python"
    return label, 1e3 * elapsed / len(sizes), sum(sizes) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--batch", type=int, default=28)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--wheels", type=Path, help="as gpu_check's --wheels")
    args = parser.parse_args()
    if args.wheels is not None:
        gpu_check.install_wheels(args.wheels)
    gpu_check.example("make_model")  # its folder on sys.path
    from runtime.serving.platforms.torchscript import import_torch

    import_torch()  # as the engine imports it (passive OpenMP waits)
    from runtime.serving.platforms import Device, platform_for
    from runtime.serving.repository import load_repository

    kind = "KIND_GPU" if args.device == "cuda" else "KIND_CPU"
    repo = gpu_check.build_repository(Path(tempfile.mkdtemp()) / "m", args.small, 64, kind)
    config = load_repository(repo)[0]
    target = Device("gpu", 0) if args.device == "cuda" else Device("cpu")
    instance = platform_for(config).load(config, config.latest_version, target, os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    xs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in range(1, 65)}
    fixed = [args.batch] * args.calls
    for b in sorted(set(rng.integers(1, 65, 200).tolist()) | {args.batch}):
        instance.run({"data_0": xs[b]})  # every shape seen once: first-call costs are not what is measured
    varying = [int(b) for b in rng.integers(1, 2 * args.batch, args.calls)]
    rows: list[Row] = [("fixed batch", *timed(instance.run, fixed, xs))]
    label = f"random batch 1..{2 * args.batch - 1} (mean {np.mean(varying):.0f})"
    rows.append((label, *timed(instance.run, varying, xs)))
    rows.append(("fixed batch, again", *timed(instance.run, fixed, xs)))
    image = gpu_check.example("client").synthetic_jpeg()
    cores = os.cpu_count() or 1
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        busy = pool.starmap_async(gpu_check._preprocess_loop, [(image, 60.0)] * cores)
        time.sleep(2)
        rows.append((f"fixed batch, {cores} processes preprocessing", *timed(instance.run, fixed, xs)))
        pool.terminate()
        del busy
    for interval in (sys.getswitchinterval(), 0.0005):
        sys.setswitchinterval(interval)
        stop = threading.Event()
        result: list[tuple[float, float]] = []
        runner = threading.Thread(target=lambda out=result: out.append(timed(instance.run, fixed, xs)))
        spinner = threading.Thread(target=spin, args=(stop,))
        spinner.start()
        runner.start()
        runner.join()
        stop.set()
        spinner.join()
        label = f"fixed batch in a thread, another thread running Python (switch interval {1e3 * interval:g} ms)"
        rows.append((label, *result[0]))
    rows.append(instance_process_row(config, target, fixed, xs))
    print(f"batch {args.batch}, {args.device}:")
    for name, ms, rate in rows:
        print(f"  {name:60} {ms:8.2f} ms/call {rate:9.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
