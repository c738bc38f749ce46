"""CPU per image of DenseNet on onnxruntime: one session with intra-op threads against the same session
run as concurrent single-threaded shards (what the engine does with a CPU instance's threads).

    python examples/densenet_onnx/make_model.py --out /tmp/densenet
    python benchmarks/scripts/ort_threads.py /tmp/densenet/triton/densenet_onnx/1/model.onnx [--threads 2]

Each line: images/s and CPU milliseconds per image of this process over --seconds.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as runtime's sessions
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, runs: list[tuple[Any, int]], seconds: float) -> None:
    """Run each (session, batch) in its own thread, back to back, for ``seconds``."""
    done: list[int] = []
    started, cpu = time.perf_counter(), cpu_s()

    def loop(s: Any, batch: int) -> None:
        x = np.random.default_rng(0).random((batch, 3, 224, 224), np.float32)
        images = 0
        while time.perf_counter() - started < seconds:
            s.run(None, {"data_0": x})
            images += batch
        done.append(images)

    threads = [threading.Thread(target=loop, args=run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, used, images = time.perf_counter() - started, cpu_s() - cpu, sum(done)
    print(f"{name:55s} {images / elapsed:6.1f} images/s  {1e3 * used / images:6.1f} ms CPU/image", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    t, b = args.threads, args.batch
    intra, single = session(args.model, t), session(args.model, 1)
    for s in (intra, single):
        s.run(None, {"data_0": np.zeros((b, 3, 224, 224), np.float32)})
    for _ in range(args.rounds):
        measure(f"one session, {t} intra-op threads, batch {b}", [(intra, b)], args.seconds)
        shards = f"{t} shards of {b // t} at once"
        measure(f"one session, {t} intra-op threads, {shards}", [(intra, b // t)] * t, args.seconds)
        measure(f"one single-threaded session, {shards}", [(single, b // t)] * t, args.seconds)


if __name__ == "__main__":
    main()
