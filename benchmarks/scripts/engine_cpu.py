"""Server CPU per request (tiny model, or BiDAF or DenseNet hook style) by process role, for servers taking turns.

    python benchmarks/scripts/engine_cpu.py [--workers 1] [--concurrency 32] [--rounds 3]
    python benchmarks/scripts/engine_cpu.py --workload bidaf
    python benchmarks/scripts/engine_cpu.py --workload densenet --workers 2 --duration 10
    git worktree add /tmp/before <commit>
    python benchmarks/scripts/engine_cpu.py --designs process,process@/tmp/before,worker

A design is ``process`` (the engine), ``worker`` (the per-worker design), or either followed by
``@CHECKOUT``: that server runs the code of another checkout (its ``PYTHONPATH``), so a change and
the code before it are measured side by side, under the same background load. Per design and
route: req/s, p50, the mean batch and the CPU microseconds per request of the workers and of the
engine (user and system time over the step, warm-up included), medians over the rounds. On a shared machine the
throughput moves with the load; the CPU per request moves much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.engine import batches  # noqa: E402
from benchmarks.run import CONTEXT, EXAMPLES, QUERY, SCRIPTS, jpeg_bytes, load_example  # noqa: E402
from runtime.tools import bench  # noqa: E402
from tests.support import models  # noqa: E402
from tests.support.processes import comm, cpu_seconds, descendants  # noqa: E402
from tests.support.servers import ServerProcess, free_port, runtime_argv  # noqa: E402

WARMUP_S = 0.5


def roles(server: ServerProcess) -> dict[str, float]:
    """CPU seconds so far of the workers and of the engine."""
    assert server.proc is not None
    used = {"workers": 0.0, "engine": 0.0}
    for pid in descendants(server.proc.pid):
        used["engine" if comm(pid) == "runtime-engine" else "workers"] += cpu_seconds(pid)
    return used


def serve(design: str, workers: int, model_dir: Path, work: Path, entry: Path) -> ServerProcess:
    mode, _, checkout = design.partition("@")
    port = free_port()
    argv = runtime_argv("serve", "--port", str(port), "--workers", str(workers), "--model-dir", str(model_dir))
    argv += ["--entry", str(entry), "--engine", mode]
    env = {"RUNTIME_ACCESS_LOG": "false", "AZUREML_LOG_LEVEL": "WARNING"}
    if checkout:
        env["PYTHONPATH"] = checkout
    return ServerProcess(argv, port, work / f"server-{port}.log", env=env, cwd=work).start(timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", default="process,worker")
    parser.add_argument("--routes", default="/score,/v2")
    parser.add_argument("--workload", choices=("tiny", "bidaf", "densenet"), default="tiny")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    designs = args.designs.split(",")
    if len(set(designs)) < len(designs):  # each design is one server, kept by name
        parser.error(f"--designs names a design twice: {args.designs}")
    score = json.dumps({"x": [[0.1, 0.2, 0.3, 0.4]]}).encode()
    v2_body, v2_headers = bench.v2_body({"x": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)})
    targets = {
        "/score": ("/score", score, {"Content-Type": "application/json"}),
        "/v2": ("/v2/models/tiny/infer", v2_body, v2_headers),
    }
    entry = SCRIPTS / "runtime_tiny_hook.py"
    if args.workload == "bidaf":  # string tensors, through examples/bidaf_onnx's hooks
        entry = EXAMPLES / "bidaf_onnx" / "score_bidaf.py"
        qa = json.dumps({"context": CONTEXT, "query": QUERY}).encode()
        targets = {"/score": ("/score", qa, {"Content-Type": "application/json"})}
        args.routes = "/score"
    if args.workload == "densenet":  # a JPEG in, through examples/densenet_onnx's hooks
        entry = EXAMPLES / "densenet_onnx" / "score_densenet.py"
        targets = {"/score": ("/score", jpeg_bytes(), {"Content-Type": "image/jpeg"})}
        args.routes = "/score"
    with tempfile.TemporaryDirectory(prefix="engine-cpu-") as tmp:
        work = Path(tmp)
        models.make_linear(work / "models" / "triton" / "tiny" / "1" / "model.onnx")
        (work / "models" / "triton" / "tiny" / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
        if args.workload == "bidaf":
            load_example(EXAMPLES / "bidaf_onnx" / "make_model.py").main(["--out", str(work / "models")])
        if args.workload == "densenet":
            load_example(EXAMPLES / "densenet_onnx" / "make_model.py").main(["--out", str(work / "models")])
        servers: dict[str, ServerProcess] = {}
        rows: dict[tuple[str, str], list[tuple[float, float, dict[str, float], float]]] = {}
        try:
            for design in designs:
                servers[design] = serve(design, args.workers, work / "models", work, entry)
            for _ in range(args.rounds):
                for route in args.routes.split(","):
                    path, body, headers = targets[route]
                    for design, server in servers.items():
                        target = bench.Target(server.url + path, lambda body=body: body, headers)
                        before, batched = roles(server), batches(server)
                        step = asyncio.run(bench.run_step(target, args.concurrency, args.duration, WARMUP_S))
                        after, batched_after = roles(server), batches(server)
                        mean_batch = (batched_after[0] - batched[0]) / max(batched_after[1] - batched[1], 1)
                        requests = max(step.requests * (1 + WARMUP_S / args.duration), 1)
                        cpu = {k: (after[k] - before[k]) * 1e6 / requests for k in after}
                        row = (step.throughput, step.latency_ms["p50"], cpu, mean_batch)
                        rows.setdefault((route, design), []).append(row)
        finally:
            for server in servers.values():
                server.stop()
    print(f"{args.workload}: {args.workers} worker(s), c={args.concurrency}, medians of {args.rounds} rounds")
    for (route, design), steps in rows.items():
        rate = statistics.median(s[0] for s in steps)
        p50 = statistics.median(s[1] for s in steps)
        cpu = {k: statistics.median(s[2][k] for s in steps) for k in steps[0][2]}
        batch = statistics.median(s[3] for s in steps)
        print(
            f"{route:6} {design:30} {rate:7.1f} req/s  p50 {p50:6.2f} ms  batch {batch:5.2f}  CPU/request: "
            f"workers {cpu['workers']:5.0f} us, engine {cpu['engine']:4.0f} us",
            flush=True,
        )


if __name__ == "__main__":
    main()
