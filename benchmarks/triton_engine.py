"""The Triton backend's two clients, measured in one run: the workers (as shipped) or the model engine.

    python -m benchmarks.triton_engine            # about 12 minutes on 2 cores; writes docs/benchmarks-triton-engine.md
    python -m benchmarks.triton_engine --quick    # 1 s steps, to prove it works

Both servers are ``runtime serve --backend triton --triton managed`` with 2 workers, side by side and
taking turns: ``--triton-client worker`` (each worker sends every request to Triton itself) and
``--triton-client engine`` (the workers hand their tensors to the engine process over shared memory;
it batches across workers and sends Triton one request per batch). Rows: the tiny model through
/score (hook style) and /v2 at c=1 and c=32, and (``--parts tiny,densenet``) DenseNet JPEG, hook style,
at c=32: requests/s, p50, server CPU per request split into workers, engine and tritonserver (with its
python-backend stubs), and what Triton received per client request (its own statistics:
requests, inferences and executions).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.run import EXAMPLES, SCRIPTS, fmt, jpeg_bytes, load_example, step_arguments
from runtime.serving.tritonserver import find_tritonserver, install
from runtime.settings import Settings
from runtime.tools import bench
from tests.support import models
from tests.support.processes import comm, cpu_seconds, descendants
from tests.support.servers import REPO, ServerProcess, free_port, runtime_argv

CLIENTS = ("worker", "engine")  # --triton-client: the reference first
DENSENET_HOOK = EXAMPLES / "densenet_onnx" / "score_densenet.py"
# /proc/PID/comm of each process of a server; the rest (the master, the Gunicorn workers) count as workers.
ROLES = {"runtime-engine": "engine", "tritonserver": "triton", "triton_python_b": "triton"}
PARTS = ("workers", "engine", "triton")  # where server CPU is counted
PARTS_RUN = ("tiny", "densenet")  # what --parts runs
TRITON_PHASES = ("queue", "compute_input", "compute_output")  # besides compute_infer, from Triton's statistics


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def cpu_by_role(server: ServerProcess) -> dict[str, float]:
    """CPU seconds used so far by the server's processes, per role (tritonserver's stubs count as Triton)."""
    assert server.proc is not None
    used = dict.fromkeys(PARTS, 0.0)
    for pid in {server.proc.pid, *descendants(server.proc.pid)}:
        used[ROLES.get(comm(pid), "workers")] += cpu_seconds(pid)
    return used


def triton_url(server: ServerProcess) -> str:
    """host:port of the managed tritonserver (its --http-port, from its command line)."""
    assert server.proc is not None
    for pid in descendants(server.proc.pid):
        if comm(pid) == "tritonserver":
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            port = next(a.split("=", 1)[1] for a in args if a.startswith("--http-port="))
            return f"127.0.0.1:{port}"
    raise RuntimeError(f"no tritonserver under {server.proc.pid}")


def triton_counts(server: ServerProcess, model: str) -> dict[str, int]:
    """Triton's own counters for ``model``: requests it received, inferences (rows), executions (batches), and
    the nanoseconds its model instances spent computing (``compute_infer``: how busy Triton was)."""
    stats = httpx.get(f"http://{triton_url(server)}/v2/models/{model}/stats", timeout=30).json()["model_stats"][0]
    return {
        "requests": int(stats["inference_stats"]["success"]["count"]),
        "inferences": int(stats["inference_count"]),
        "executions": int(stats["execution_count"]),
        "compute_ns": int(stats["inference_stats"]["compute_infer"]["ns"]),
        # Where else a request's time in Triton went (per request; a batch's counted once per request in it).
        **{
            f"{kind}_ns": int(stats["inference_stats"][kind]["ns"])
            for kind in ("queue", "compute_input", "compute_output")
        },
    }


def answered(server: ServerProcess, model: str) -> float:
    """Inferences of ``model`` the server answered so far (warm-up included; one per client request here),
    counted where they run: in the workers (direct mode) or in the engine."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    pattern = rf'^nv_inference_request_success_total\{{(?=[^}}]*model="{model}")[^}}]*\}} (\S+)$'
    return sum(float(match.group(1)) for match in re.finditer(pattern, text, re.M))


class TritonEngineBench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.model_dir = work / "models"
        self.binary = str(find_tritonserver(None, Path(Settings().triton_home)))
        self.results: dict[str, list[dict[str, Any]]] = {"tiny": [], "densenet": []}

    def build(self, densenet: bool) -> None:
        repo = self.model_dir / "triton"
        models.make_linear(repo / "tiny" / "1" / "model.onnx")
        (repo / "tiny" / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
        if densenet:
            make = load_example(EXAMPLES / "densenet_onnx" / "make_model.py")
            make.main(["--out", str(self.model_dir)] + (["--small"] if self.args.quick else []))

    def serve(self, client: str, script: Path) -> ServerProcess:
        port = free_port()
        argv = runtime_argv(
            "serve", "--port", str(port), "--workers", str(self.args.workers), "--entry", str(script),
            "--model-dir", str(self.model_dir), "--backend", "triton", "--triton", "managed",
            "--tritonserver", self.binary,
            *(("--triton-client", client) if client != "worker" else ()),  # worker: the command as shipped
        )  # fmt: skip
        env = {"RUNTIME_ACCESS_LOG": "false", "AZUREML_LOG_LEVEL": "WARNING"}
        return ServerProcess(argv, port, self.work / f"server-{port}.log", env=env, cwd=self.work).start(timeout=300)

    def both(self, script: Path) -> dict[str, ServerProcess]:
        servers: dict[str, ServerProcess] = {}
        try:
            for client in self.args.clients:
                servers[client] = self.serve(client, script)
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        return servers

    def alternate(self, servers: dict[str, ServerProcess], model: str, target: dict[str, Any],
                  concurrency: int, what: str) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Each client ``rounds`` times, taking turns; per client the round with the median throughput."""
        runs: dict[str, list[dict[str, Any]]] = {client: [] for client in servers}
        for round_ in range(self.args.rounds):
            for client, server in servers.items():
                log(f"{what}, c={concurrency}: --triton-client {client} (round {round_ + 1})")
                counts_before, cpu_before = triton_counts(server, model), cpu_by_role(server)
                started = time.monotonic()
                sent_before = answered(server, model)
                url = server.url + target["path"]
                body = target["body"]
                measured = bench.Target(url, lambda body=body: body, target["headers"])
                step = asdict(asyncio.run(bench.run_step(measured, concurrency, self.args.duration, self.args.warmup)))
                counts_after, cpu_after = triton_counts(server, model), cpu_by_role(server)
                # Warm-up requests are not in the step's count, but in the CPU and in Triton's counters.
                sent = max(answered(server, model) - sent_before, 1)
                step["server_cpu_us"] = {p: (cpu_after[p] - cpu_before[p]) * 1e6 / sent for p in PARTS}
                step["triton_per_request"] = {k: (counts_after[k] - counts_before[k]) / sent for k in counts_after}
                # Triton's compute time per wall second, summed over requests (the report makes it per execution).
                busy_ns = counts_after["compute_ns"] - counts_before["compute_ns"]
                step["triton_busy"] = busy_ns / 1e9 / (time.monotonic() - started)
                runs[client].append(step)
        return {client: sorted(steps, key=lambda s: s["throughput"])[len(steps) // 2] for client, steps in runs.items()}

    def tiny(self) -> None:
        score = json.dumps({"x": [[0.1, 0.2, 0.3, 0.4]]}).encode()
        v2_body, v2_headers = bench.v2_body({"x": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)})
        servers = self.both(SCRIPTS / "runtime_tiny_hook.py")
        try:
            for route, path, body, headers in (
                ("/score", "/score", score, {"Content-Type": "application/json"}),
                ("/v2", "/v2/models/tiny/infer", v2_body, v2_headers),
            ):
                if route not in self.args.routes:
                    continue
                for concurrency in self.args.concurrency:
                    target = {"path": path, "body": body, "headers": headers}
                    picked = self.alternate(servers, "tiny", target, concurrency, f"tiny {route}")
                    for client, step in picked.items():
                        self.results["tiny"].append({"client": client, "route": route, "step": step})
        finally:
            for server in servers.values():
                server.stop()

    def densenet(self) -> None:
        servers = self.both(DENSENET_HOOK)
        try:
            target = {"path": "/score", "body": jpeg_bytes(), "headers": {"Content-Type": "image/jpeg"}}
            picked = self.alternate(servers, "densenet_onnx", target, 32, "DenseNet JPEG")
            for client, step in picked.items():
                self.results["densenet"].append({"client": client, "route": "/score JPEG", "step": step})
        finally:
            for server in servers.values():
                server.stop()


def row(client: str, route: str, step: dict[str, Any], reference: dict[str, Any] | None) -> str:
    cpu, triton = step["server_cpu_us"], step["triton_per_request"]
    total = sum(cpu.values())
    busy = "-"
    if "triton_busy" in step:
        # Triton counts a batch's compute time once for each request in it: per execution, it is that sum
        # times executions / requests.
        busy = f"{step['triton_busy'] * triton['executions'] / max(triton['requests'], 1e-9):.0%}"
    ratio = ""
    if reference is not None and client != "worker":
        ref_total = sum(reference["server_cpu_us"].values())
        ratio = (
            f" | {step['throughput'] / max(reference['throughput'], 1e-9):.2f}"
            f" | {step['latency_ms']['p50'] / max(reference['latency_ms']['p50'], 1e-9):.2f}"
            f" | {total / max(ref_total, 1e-9):.2f}"
        )
    else:
        ratio = " | 1 | 1 | 1"
    return (
        f"| {route} | {step['concurrency']} | {client} | {fmt(step['throughput'])} | {step['latency_ms']['p50']:.2f} | "
        f"{total:,.0f} | {cpu['workers']:,.0f} | {cpu['engine']:,.0f} | {cpu['triton']:,.0f} | "
        f"{triton['requests']:.2f} | {triton['inferences']:.2f} | {triton['executions']:.3f} | {busy} | "
        f"{sum(step['errors'].values())}{ratio} |"
    )


def report(results: dict[str, list[dict[str, Any]]], command: str, date: str) -> str:
    lines = [
        "# Benchmarks: who talks to Triton, the workers or the model engine",
        "",
        "Generated by `benchmarks/triton_engine.py`; do not edit by hand. Re-run with:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"* date: {date} (the last run)",
        f"* machine: {json.dumps(bench.machine())}; client and servers share these cores",
        "* both: `runtime serve --backend triton --triton managed --workers 2` (tritonserver from nvidia-pytriton, "
        "python backend running onnxruntime); `worker`: `--triton-client worker` (the default: each worker "
        "calls Triton); `engine`: `--triton-client engine` (the engine batches across workers and calls Triton "
        "once per batch)",
        "* server CPU: µs per client request, of the workers (and master), the engine and tritonserver with its "
        "python-backend stubs; Triton per request: what Triton's own statistics counted per client request "
        "(requests it received, inferences, executions); Triton busy: the share of the step's wall time its "
        "model instance spent computing (Triton's `compute_infer`); ratios: engine / worker in the same run",
        "",
        "| route | c | client | req/s | p50 ms | server CPU µs/req | workers | engine | triton | "
        "Triton requests | inferences | executions | Triton busy | errors | req/s ratio | p50 ratio | CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for part in ("tiny", "densenet"):
        rows = results.get(part, [])
        reference = {(r["route"], r["step"]["concurrency"]): r["step"] for r in rows if r["client"] == "worker"}
        for r in rows:
            key = (r["route"], r["step"]["concurrency"])
            lines.append(row(r["client"], r["route"], r["step"], reference.get(key)))
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser)
    parser.add_argument("--output", type=Path, help="the report (full: docs/benchmarks-triton-engine.md)")
    parser.add_argument("--merge", action="store_true", help="keep the other parts' rows from the report's JSON")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from its JSON; run nothing")
    parser.add_argument("--parts", default="tiny", help="a subset of tiny,densenet")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="a subset of worker,engine")
    parser.add_argument("--rounds", type=int, help="turns per client and step; the median counts (full 3, quick 1)")
    parser.add_argument("--routes", default="/score,/v2", help="the tiny model's routes (/score,/v2)")
    parser.add_argument("--concurrency", default="1,32", help="the tiny model's client concurrencies (1,32)")
    parser.add_argument("--install", action="store_true", help="run `runtime triton install` first")
    args = parser.parse_args()
    # Full run, quick run: seconds per step, seconds of warm-up, turns.
    defaults = (8.0, 2.0, 3) if not args.quick else (1.0, 0.5, 1)
    args.duration = args.duration or defaults[0]
    args.warmup = defaults[1] if args.warmup is None else args.warmup
    args.rounds = args.rounds or defaults[2]
    args.clients = args.clients.split(",")
    args.routes = args.routes.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.install:
        install(Path(Settings().triton_home))
    command = "python -m benchmarks.triton_engine " + " ".join(sys.argv[1:])
    parts = args.parts.split(",")
    output = args.output or (
        Path(tempfile.gettempdir()) / "runtime-bench-triton-engine-quick.md"
        if args.quick
        else REPO / "docs" / "benchmarks-triton-engine.md"
    )
    previous = json.loads(output.with_suffix(".json").read_text()) if output.with_suffix(".json").is_file() else {}
    if args.report_only:
        results = {part: previous.get(part, []) for part in PARTS_RUN}
        save(output, results, latest_commands(previous["command"]), previous.get("date", "-"))
        return
    with tempfile.TemporaryDirectory(prefix="runtime-bench-triton-engine-") as tmp:
        run = TritonEngineBench(args, Path(tmp))
        run.build("densenet" in parts)
        for part in parts:
            getattr(run, part)()
    results = run.results
    if args.merge and previous:
        results = {part: rows if part in parts else previous.get(part, []) for part, rows in results.items()}
        command = latest_commands(f"{previous['command']}; {command}")
    save(output, results, command.strip(), f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")


def latest_commands(commands: str) -> str:
    """The commands (joined by "; ") whose rows a merged report shows: the last one to run each part."""
    by_part: dict[str, str] = {}
    for command in (c.strip() for c in commands.split(";") if c.strip()):
        words = command.split()
        parts = words[words.index("--parts") + 1] if "--parts" in words[:-1] else "tiny"
        for part in parts.split(","):
            by_part[part] = command
    return "; ".join(dict.fromkeys(by_part[p] for p in PARTS_RUN if p in by_part))


def save(output: Path, results: dict[str, list[dict[str, Any]]], command: str, date: str) -> None:
    """The report, and its JSON (what --merge and --report-only read back)."""
    output.write_text(report(results, command, date))
    output.with_suffix(".json").write_text(json.dumps({**results, "command": command, "date": date}, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
