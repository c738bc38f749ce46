"""The model engine against the per-worker design (``--engine worker``), measured in one run.

    python -m benchmarks.engine            # about 15 minutes on 2 cores; writes docs/benchmarks-engine.md and .json
    python -m benchmarks.engine --quick    # the small DenseNet and 1 s steps, to prove it works

Rows: DenseNet JPEG hook style with 2 workers at c=32 (images/s and mean batch size, from the
server's own ``runtime_batch_size`` histogram); the tiny model through /score and /v2 at c=1 and
c=32 (what the transport costs); total server RSS (master, workers and engine) with 1, 2 and 4
workers holding DenseNet, next to a bare onnxruntime process holding it and the same server with
4 workers and no models.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.run import (
    EXAMPLES,
    RSS_FIELDS,
    SCRIPTS,
    bare_onnxruntime_status_kb,
    fmt,
    jpeg_bytes,
    load_example,
    rss_kb,
    status_kb,
    step_arguments,
)
from runtime.tools import bench
from tests.support import models
from tests.support.processes import comm, cpu_seconds, descendants
from tests.support.servers import REPO, ServerProcess, free_port, runtime_argv

MODES = ("process", "worker")  # the engine; the per-worker design
DENSENET_HOOK = EXAMPLES / "densenet_onnx" / "score_densenet.py"


class EngineBench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.model_dir = work / "models"
        self.results: dict[str, Any] = {"jpeg": [], "tiny": [], "memory": {}}

    def log(self, message: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)

    def build(self) -> None:
        repo = self.model_dir / "triton"
        models.make_linear(repo / "tiny" / "1" / "model.onnx")
        (repo / "tiny" / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
        make = load_example(EXAMPLES / "densenet_onnx" / "make_model.py")
        make.main(["--out", str(self.model_dir)] + (["--small"] if self.args.quick else []))

    def serve(self, workers: int, *args: str, models_too: bool = True) -> ServerProcess:
        port = free_port()
        extra = ("--model-dir", str(self.model_dir)) if models_too else ()
        argv = runtime_argv("serve", "--port", str(port), "--workers", str(workers), *extra, *args)
        env = {"RUNTIME_ACCESS_LOG": "false", "AZUREML_LOG_LEVEL": "WARNING"}
        return ServerProcess(argv, port, self.work / f"server-{port}.log", env=env, cwd=self.work).start(timeout=300)

    def step(self, target: bench.Target, concurrency: int) -> dict[str, Any]:
        step = asyncio.run(bench.run_step(target, concurrency, self.args.duration, self.args.warmup))
        return asdict(step)

    def both(self, workers: int, script: Path) -> dict[str, ServerProcess]:
        """The two designs side by side (idle while the other is measured), so that load from elsewhere hits both."""
        servers: dict[str, ServerProcess] = {}
        try:
            for mode in MODES:
                servers[mode] = self.serve(workers, "--entry", str(script), "--engine", mode)
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        return servers

    def alternate(self, servers: dict[str, ServerProcess], path: str, body: bytes, headers: dict[str, str],
                  concurrency: int, what: str) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Each design ``rounds`` times, taking turns; per design the round with the median throughput."""
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in servers}
        for round_ in range(self.args.rounds):
            for mode, server in servers.items():
                self.log(f"{what}, c={concurrency}: {label(mode)} (round {round_ + 1})")
                before, cpu_before = batches(server), server_cpu_s(server)
                step = self.step(bench.Target(server.url + path, lambda: body, headers), concurrency)
                after, cpu_after = batches(server), server_cpu_s(server)
                step["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                # Warm-up requests are not counted in the step: CPU per request is over the whole step.
                requests = max(step["requests"] * (1 + self.args.warmup / self.args.duration), 1)
                for key in ("total", "engine"):
                    step[f"server_cpu_us_{key}"] = (cpu_after[key] - cpu_before[key]) * 1e6 / requests
                runs[mode].append(step)
        return {mode: sorted(steps, key=lambda s: s["throughput"])[len(steps) // 2] for mode, steps in runs.items()}

    def jpeg(self) -> None:
        servers = self.both(2, DENSENET_HOOK)
        try:
            picked = self.alternate(
                servers, "/score", jpeg_bytes(), {"Content-Type": "image/jpeg"}, 32, "DenseNet JPEG 2w"
            )
            for mode, step in picked.items():
                self.results["jpeg"].append({"engine": mode, "step": step, "mean_batch": step["mean_batch"]})
        finally:
            for server in servers.values():
                server.stop()

    def tiny(self) -> None:
        score = json.dumps({"x": [[0.1, 0.2, 0.3, 0.4]]}).encode()
        v2_body, v2_headers = bench.v2_body({"x": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)})
        for workers in self.args.workers:
            servers = self.both(workers, SCRIPTS / "runtime_tiny_hook.py")
            try:
                for route, path, body, headers in (
                    ("/score", "/score", score, {"Content-Type": "application/json"}),
                    ("/v2", "/v2/models/tiny/infer", v2_body, v2_headers),
                ):
                    for concurrency in (1, 32):
                        picked = self.alternate(servers, path, body, headers, concurrency, f"tiny {route} {workers}w")
                        for mode, step in picked.items():
                            self.results["tiny"].append(
                                {"engine": mode, "route": route, "workers": workers, "step": step}
                            )
            finally:
                for server in servers.values():
                    server.stop()

    def memory(self) -> None:
        image = jpeg_bytes()
        bare = bare_onnxruntime_status_kb(self.model_dir)
        memory: dict[str, Any] = {"bare_onnxruntime_mib": bare["VmRSS"] / 1024}
        # Where the RSS is with 4 workers, per process role: {server: {role: {field: MiB}}}.
        split = memory["split_4_workers_mib"] = {"bare": {"onnxruntime": {k: v / 1024 for k, v in bare.items()}}}
        self.log("memory: 4 workers without models")
        server = self.serve(4, "--entry", str(DENSENET_HOOK), models_too=False)
        try:
            # The same burst: the workers decode and preprocess as with a model, then answer that it is missing.
            self.warm(server, image)
            memory["no_models_4_workers_mib"] = total_rss_kb(server) / 1024
            memory["no_models_4_workers_pss_mib"] = total_pss_kb(server) / 1024
            split["none"] = rss_split_mib(server)
        finally:
            server.stop()
        for workers in (1, 2, 4):
            for mode in MODES:
                self.log(f"memory: {workers} worker(s) holding DenseNet, engine {mode}")
                server = self.serve(workers, "--entry", str(DENSENET_HOOK), "--engine", mode)
                try:
                    self.warm(server, image)  # the largest batch at least once
                    memory[f"{mode}_{workers}_mib"] = total_rss_kb(server) / 1024
                    memory[f"{mode}_{workers}_pss_mib"] = total_pss_kb(server) / 1024
                    if workers == 4:
                        split[mode] = rss_split_mib(server)
                finally:
                    server.stop()
        self.results["memory"] = memory

    def warm(self, server: ServerProcess, image: bytes) -> None:
        """A burst of 32 concurrent JPEG requests."""
        target = bench.Target(server.url + "/score", lambda: image, {"Content-Type": "image/jpeg"})
        asyncio.run(bench.run_step(target, 32, 2.0 if not self.args.quick else 0.5, 0.0))


def batches(server: ServerProcess) -> tuple[float, float]:
    """(images, executions) so far, summed over models and processes, from /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    total = {"sum": 0.0, "count": 0.0}
    for kind in total:
        for match in re.finditer(rf"^runtime_batch_size_{kind}\{{[^}}]*\}} (\S+)$", text, re.M):
            total[kind] += float(match.group(1))
    return total["sum"], total["count"]


def server_cpu_s(server: ServerProcess) -> dict[str, float]:
    """CPU seconds used so far (user and system) by the master, its workers and the engine; and the engine's."""
    assert server.proc is not None
    used = {"total": 0.0, "engine": 0.0}
    for pid in {server.proc.pid, *descendants(server.proc.pid)}:
        seconds = cpu_seconds(pid)
        used["total"] += seconds
        if comm(pid) == "runtime-engine":
            used["engine"] += seconds
    return used


def total_rss_kb(server: ServerProcess) -> float:
    """The master, its workers and the engine."""
    assert server.proc is not None
    return sum(rss_kb(pid) for pid in {server.proc.pid, *descendants(server.proc.pid)})


ROLES = {"runtime-engine": "engine", "runtime-inst": "instances"}  # by /proc/PID/comm; the rest are workers
PROCESS_NAMES = {role: name for name, role in ROLES.items()}


def rss_split_mib(server: ServerProcess) -> dict[str, dict[str, float]]:
    """RSS and its anonymous, file and shmem parts, MiB, for the master, the workers and the engine (and its
    instance processes), each role summed."""
    assert server.proc is not None
    roles: dict[str, dict[str, float]] = {}
    for pid in {server.proc.pid, *descendants(server.proc.pid)}:
        role = "master" if pid == server.proc.pid else ROLES.get(comm(pid), "workers")
        into = roles.setdefault(role, dict.fromkeys(RSS_FIELDS, 0.0))
        for key, kb in status_kb(pid).items():
            into[key] += kb / 1024
    return roles


def total_pss_kb(server: ServerProcess) -> float:
    """The same processes' proportional set size: pages they share (fork, the arenas) counted once."""
    assert server.proc is not None
    total = 0.0
    for pid in {server.proc.pid, *descendants(server.proc.pid)}:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += float(line.split()[1])
    return total


def report(results: dict[str, Any], command: str) -> str:
    lines = [
        "# Benchmarks: one model engine against a model copy per worker",
        "",
        "Generated by `benchmarks/engine.py`; do not edit by hand. Re-run with:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"* date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"* machine: {json.dumps(bench.machine())}; client and servers share these cores",
        "* `engine`: `runtime serve` as shipped (`--engine process`); `per-worker`: `--engine worker`, every "
        "worker loads its own models and batches its own requests (the design before the engine)",
        "",
        "## DenseNet JPEG, hook style, 2 workers, c=32",
        "",
        "| design | images/s | mean batch | p50 ms | server CPU ms/image (engine) | errors |",
        "|---|---|---|---|---|---|",
    ]
    by_mode = {r["engine"]: r for r in results["jpeg"]}
    for mode, row in by_mode.items():
        step = row["step"]
        lines.append(
            f"| {label(mode)} | {fmt(step['throughput'])} | {row['mean_batch']:.1f} | "
            f"{step['latency_ms']['p50']:.0f} | {cpu_cell(step, 1e-3)} | {sum(step['errors'].values())} |"
        )
    lines += ["", "## Tiny model: what the transport costs", ""]
    lines += [
        "| route | workers | design | p50 ms c=1 | req/s c=1 | req/s c=32 | p50 ms c=32 | server CPU µs/req c=1 "
        "(engine) | c=32 (engine) | errors |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|"]
    tiny: dict[tuple[str, int, str], dict[int, Any]] = {}
    for row in results["tiny"]:
        tiny.setdefault((row["route"], row["workers"], row["engine"]), {})[row["step"]["concurrency"]] = row["step"]
    for (route, workers, mode), steps in tiny.items():
        one, many = steps.get(1), steps.get(32)
        if one is None or many is None:
            continue
        errors = sum(sum(s["errors"].values()) for s in steps.values())
        lines.append(
            f"| {route} | {workers} | {label(mode)} | {one['latency_ms']['p50']:.2f} | {fmt(one['throughput'])} | "
            f"{fmt(many['throughput'])} | {many['latency_ms']['p50']:.1f} | {cpu_cell(one)} | {cpu_cell(many)} | "
            f"{errors} |"
        )
    memory = results["memory"]
    if memory:
        lines += ["", "## Total server memory holding DenseNet (master, workers and engine), MiB", ""]
        lines += ["| workers | engine RSS | per-worker RSS | engine PSS | per-worker PSS |", "|---|---|---|---|---|"]
        for workers in (1, 2, 4):
            cells = [memory.get(f"{mode}_{workers}{kind}_mib", 0) for kind in ("", "_pss") for mode in MODES]
            lines.append(f"| {workers} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
        lines += [
            "",
            "Warm: after a 2 s burst of 32 concurrent JPEG requests (also for the server without models: its "
            "workers decode and preprocess, then answer that no model serves). RSS sums count pages that "
            "processes share (memory Gunicorn's fork shares, the workers' arenas that the engine maps too) once "
            "per process; PSS counts them once.",
            f"A bare onnxruntime process holding DenseNet (after batches 1 and max_batch_size): "
            f"{memory['bare_onnxruntime_mib']:.0f} MiB. The same server with 4 workers and no models: "
            f"{memory['no_models_4_workers_mib']:.0f} MiB RSS, {memory.get('no_models_4_workers_pss_mib', 0):.0f} "
            "MiB PSS.",
            *split_table(memory.get("split_4_workers_mib", {})),
        ]
    lines += ["", *targets(results), ""]
    analysis = Path(__file__).resolve().parent / "engine-analysis.md"
    if analysis.is_file():
        lines += [analysis.read_text().rstrip(), ""]
    return "\n".join(lines)


def split_table(split: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Where the RSS is with 4 workers: per server and process role, anonymous, file and shmem."""
    if not split:
        return []
    names = {"bare": "bare onnxruntime", "none": "no models", "process": "engine", "worker": "per-worker"}
    lines = [
        "",
        "Where that RSS is with 4 workers, MiB (`/proc/PID/status`: anon is heap and other private memory, "
        "file the mapped libraries, shmem the workers' arenas, in every process that maps them):",
        "",
        "| server | processes | RSS | anon | file | shmem |",
        "|---|---|---|---|---|---|",
    ]
    for server in ("bare", "none", "process", "worker"):
        roles = split.get(server, {})
        for role in sorted(roles, key=("onnxruntime", "master", "workers", "engine", "instances").index):
            fields = roles[role]
            cells = " | ".join(f"{fields.get(k, 0):.0f}" for k in RSS_FIELDS)
            lines.append(f"| {names[server]} | {PROCESS_NAMES.get(role, role)} | {cells} |")
    return lines


def cpu_cell(step: dict[str, Any], scale: float = 1.0) -> str:
    """Server CPU per request, and the engine's part in brackets; '-' for runs from before it was measured."""
    if "server_cpu_us_total" not in step:
        return "-"
    total, engine = step["server_cpu_us_total"] * scale, step["server_cpu_us_engine"] * scale
    return f"{total:.0f} ({engine:.0f})" if engine else f"{total:.0f}"


def label(mode: str) -> str:
    return "engine" if mode == "process" else "per-worker"


def targets(results: dict[str, Any]) -> list[str]:
    checks: list[tuple[str, float, float, str]] = []
    jpeg = {r["engine"]: r for r in results["jpeg"]}
    if set(jpeg) == set(MODES):
        engine, worker = jpeg["process"], jpeg["worker"]
        checks.append(("DenseNet JPEG 2w c=32: mean batch, engine / per-worker",
                       engine["mean_batch"] / max(worker["mean_batch"], 1e-9), 1.6, ">="))  # fmt: skip
        checks.append(("DenseNet JPEG 2w c=32: images/s, engine / per-worker",
                       engine["step"]["throughput"] / max(worker["step"]["throughput"], 1e-9), 1.0, ">="))  # fmt: skip
    steps = {(r["route"], r["workers"], r["engine"], r["step"]["concurrency"]): r["step"] for r in results["tiny"]}
    for route, workers, _, _ in sorted({(k[0], k[1], 0, 0) for k in steps}):
        engine_1, worker_1 = steps.get((route, workers, "process", 1)), steps.get((route, workers, "worker", 1))
        engine_32, worker_32 = steps.get((route, workers, "process", 32)), steps.get((route, workers, "worker", 32))
        if engine_1 and worker_1:
            added = engine_1["latency_ms"]["p50"] - worker_1["latency_ms"]["p50"]
            checks.append((f"tiny {route} {workers}w: p50 added at c=1 (ms)", added, 0.2, "<="))
        if engine_32 and worker_32:
            ratio = engine_32["throughput"] / max(worker_32["throughput"], 1e-9)
            checks.append((f"tiny {route} {workers}w: req/s at c=32, engine / per-worker", ratio, 0.9, ">="))
    memory = results["memory"]
    if memory.get("process_4_mib"):
        allowed = memory["bare_onnxruntime_mib"] + memory["no_models_4_workers_mib"]
        checks.append(("RSS, 4 workers with the engine / (bare onnxruntime + 4 workers without models)",
                       memory["process_4_mib"] / allowed, 1.15, "<="))  # fmt: skip
        if memory.get("no_models_4_workers_pss_mib"):
            allowed = memory["bare_onnxruntime_mib"] + memory["no_models_4_workers_pss_mib"]
            checks.append(("PSS, 4 workers with the engine / (bare onnxruntime + 4 workers without models)",
                           memory["process_4_pss_mib"] / allowed, 1.15, "<="))  # fmt: skip
    lines = ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, value, goal, op in checks:
        met = value >= goal if op == ">=" else value <= goal
        lines.append(f"| {name} | {value:.2f} | {op} {goal:g} | {'yes' if met else '**no**'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser)
    parser.add_argument("--workers", default="1,2", help="worker counts for the tiny rows (1,2)")
    parser.add_argument("--rounds", type=int, help="turns per design and step; the median counts (full 3, quick 1)")
    parser.add_argument("--parts", default="jpeg,tiny,memory", help="a subset of jpeg,tiny,memory")
    parser.add_argument("--output", type=Path, help="the report (full: docs/benchmarks-engine.md)")
    parser.add_argument("--merge", action="store_true", help="keep the other parts' results from the report's JSON")
    args = parser.parse_args()
    args.duration = args.duration or (1.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 3.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.workers = [int(w) for w in args.workers.split(",")]
    command = "python -m benchmarks.engine " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="runtime-bench-engine-") as tmp:
        run = EngineBench(args, Path(tmp))
        output = args.output or (
            Path(tmp).parent / "runtime-bench-engine-quick.md" if args.quick else REPO / "docs" / "benchmarks-engine.md"
        )
        if args.merge and output.with_suffix(".json").is_file():
            previous = json.loads(output.with_suffix(".json").read_text())
            run.results.update({k: v for k, v in previous.items() if k in run.results})
            # The same command again replaces the parts it ran: listed once, last.
            earlier = [c.strip() for c in previous.get("command", "").split(";")]
            command = "; ".join([*(c for c in earlier if c and c != command.strip()), command])
        run.build()
        for part in args.parts.split(","):
            run.results[part] = [] if part != "memory" else {}
            getattr(run, part)()
        output.write_text(report(run.results, command.strip()))
        output.with_suffix(".json").write_text(json.dumps({**run.results, "command": command}, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
