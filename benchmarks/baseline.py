"""HEAD against a baseline commit on the rows issue 9 names, in one run, with azmlinfsrv beside them.

    python -m benchmarks.baseline                 # baseline 505bb0e; writes docs/benchmarks-baseline.md
    python -m benchmarks.baseline --rounds 1 --duration 2 --warmup 1   # a quick look

Rows: the tiny model through ``/v2/models/tiny/infer`` with 1 worker at c=1 and c=32, and BiDAF
hook style (examples/bidaf_onnx/score_bidaf.py) through ``/score`` with 1 worker at c=32, each
served by the baseline's ``runtime serve``, by HEAD's as shipped (its model engine) and by HEAD's
``--engine worker`` (the model in the worker, as the baseline had it: what the worker's own request
path costs, apart from the hop to the engine), plus azmlinfsrv 1.5.1 with the benchmark's BiDAF
score.py. The baseline is a clean clone at its commit with a venv of its own (made by
:mod:`benchmarks.suite`); all sides serve the same model repository and take turns, round by round,
and the median round counts. Each step also reports the server's CPU per request (master, workers
and engine, user and system, over the step and its warm-up), which the other load on a shared
machine disturbs far less than the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.engine import server_cpu_s
from benchmarks.run import EXAMPLES, LAUNCHER, SCRIPTS, build_models, workloads
from benchmarks.suite import git, prepare
from runtime.tools import bench
from tests.support.servers import REPO, ServerProcess, free_port
from tests.support.venvs import azmlinfsrv_bench_python

QUIET = {"RUNTIME_ACCESS_LOG": "false", "AZUREML_LOG_LEVEL": "WARNING"}
PER_WORKER = "HEAD --engine worker"
AZMLINFSRV_NOTE = (
    "Why azmlinfsrv's rate swings from run to run (125 to 444 req/s in earlier runs): it serves with one Gunicorn "
    "sync worker (one request at a time, a new connection per request, an access-log line each), and the "
    "benchmark's score.py opens its onnxruntime session with the defaults: intra-op threads on every core that "
    "spin while they wait. On an idle machine the spinning costs no time; on a busy one it takes the cores the "
    "other processes need. Measured side by side at load 10 (BiDAF, c=32): 55 req/s at 6.5 ms of server CPU a "
    "request as shipped, 104 req/s at 2.6 ms with `session.intra_op.allow_spinning` 0; the runtime's sessions "
    "never spin."
)


def serve(python: Path, clone: Path, model_dir: Path, work: Path, name: str, *args: str) -> ServerProcess:
    """``runtime serve`` from ``python``'s venv (its console script: the baseline has no ``-m`` entry), 1 worker."""
    port = free_port()
    argv = [str(python.parent / "runtime"), "serve", "--port", str(port), "--workers", "1"]
    argv += ["--model-dir", str(model_dir), *args]
    server = ServerProcess(argv, port, work / f"{name}-{port}.log", env=QUIET, cwd=clone)
    return server.start(timeout=300)


def azmlinfsrv(model_dir: Path, work: Path) -> ServerProcess:
    port = free_port()
    argv = [str(azmlinfsrv_bench_python()), str(LAUNCHER), "--entry_script", str(SCRIPTS / "aml_bidaf.py")]
    argv += ["--port", str(port), "--model_dir", str(model_dir), "--worker_count", "1"]
    server = ServerProcess(argv, port, work / f"azmlinfsrv-{port}.log", env={"AZUREML_LOG_LEVEL": "WARNING"})
    return server.start(timeout=300)


def step(
    server: ServerProcess, target: bench.Target, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    before = server_cpu_s(server)["total"]
    result = asyncio.run(bench.run_step(target, concurrency, duration, warmup))
    used = server_cpu_s(server)["total"] - before
    errors = sum(result.errors.values())
    # The warm-up's requests are not counted in the step: scale them in at the step's rate.
    requests = max(result.requests * (1 + warmup / duration), 1)
    return {
        "throughput": result.throughput,
        "p50_ms": result.latency_ms["p50"],
        "errors": errors,
        "server_cpu_us": used * 1e6 / requests,
    }


def measure(
    start: Callable[[], ServerProcess], path: str, body: bytes, headers: dict[str, str], steps: list[int], args: Any
) -> dict[int, dict[str, Any]]:
    server = start()
    try:
        target = bench.Target(server.url + path, lambda: body, headers)
        return {c: step(server, target, c, args.duration, args.warmup) for c in steps}
    finally:
        server.stop()


def median_round(rounds: list[dict[int, dict[str, Any]]], concurrency: int) -> dict[str, Any]:
    """The round with the median throughput at ``concurrency``."""
    ordered = sorted(rounds, key=lambda r: r[concurrency]["throughput"])
    return ordered[len(ordered) // 2][concurrency]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="505bb0e")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-baseline.md")
    args = parser.parse_args(argv)
    baseline = git("rev-parse", args.baseline)
    clone = prepare(baseline)
    head = (Path(sys.executable), REPO)
    sides: dict[str, tuple[Path, Path, tuple[str, ...]]] = {
        "baseline": (clone / ".venv" / "bin" / "python", clone, ()),
        "HEAD": (*head, ()),
        PER_WORKER: (*head, ("--engine", "worker")),
    }
    results: dict[str, dict[str, list[dict[int, dict[str, Any]]]]] = {}
    args.load = [os.getloadavg()[0]]  # the machine's other load explains much of a run's rates
    with tempfile.TemporaryDirectory(prefix="baseline-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "models"
        build_models(model_dir, small=False)
        loads = {w.name: w for w in workloads(model_dir)}
        v2_body, v2_headers = bench.v2_body(loads["tiny"].v2_inputs or {})
        bidaf = loads["bidaf"]
        json_headers = {"Content-Type": "application/json"}
        hook = EXAMPLES / "bidaf_onnx" / "score_bidaf.py"
        for round_ in range(args.rounds):
            for side, (python, root, extra) in sides.items():
                rows = results.setdefault(side, {})
                rows.setdefault("tiny v2", []).append(
                    measure(
                        functools.partial(serve, python, root, model_dir, work, "tiny", *extra),
                        "/v2/models/tiny/infer",
                        v2_body,
                        v2_headers,
                        [1, 32],
                        args,
                    )
                )
                script = root / hook.relative_to(REPO)
                rows.setdefault("bidaf hook", []).append(
                    measure(
                        functools.partial(
                            serve, python, root, model_dir, work, "bidaf", *extra, "--entry", str(script)
                        ),
                        "/score",
                        bidaf.score_body,
                        json_headers,
                        [32],
                        args,
                    )
                )
            results.setdefault("azmlinfsrv", {}).setdefault("bidaf hook", []).append(
                measure(
                    functools.partial(azmlinfsrv, model_dir, work), "/score", bidaf.azml_body, json_headers, [32], args
                )
            )
            args.load.append(os.getloadavg()[0])
            print(f"round {round_ + 1}: {json.dumps(results)[:400]}...", flush=True)
    write_report(results, args, baseline)
    print(args.out.read_text())
    return 0


def write_report(results: dict[str, Any], args: Any, baseline: str) -> None:
    def row(side: str, name: str, c: int) -> dict[str, Any]:
        found: dict[str, Any] = median_round(results[side][name], c)
        return found

    tiny_base, tiny_head = row("baseline", "tiny v2", 1), row("HEAD", "tiny v2", 1)
    heads = ("baseline", "HEAD", PER_WORKER)
    bidaf = {side: row(side, "bidaf hook", 32) for side in (*heads, "azmlinfsrv")}
    lines = [
        "# Benchmark: HEAD against the baseline on issue 9's rows",
        "",
        "Generated by `benchmarks/baseline.py`; do not edit by hand. Re-run with:",
        "",
        "```bash",
        f"python -m benchmarks.baseline --baseline {args.baseline} --rounds {args.rounds}",
        "```",
        "",
        f"* date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; baseline {baseline[:12]}, "
        f"HEAD {git('rev-parse', '--short=12', 'HEAD')}; 2 cores shared by client and servers; load average "
        f"(1 min) at the start and after each round: {', '.join(f'{x:.1f}' for x in getattr(args, 'load', []))}",
        f"* steps: {args.duration:g} s after {args.warmup:g} s warm-up, closed loop; {args.rounds} rounds, the sides "
        "taking turns; the round with the median throughput is shown",
        f"* `HEAD` is `runtime serve` as shipped (its model engine); `{PER_WORKER}` loads the model in the worker, "
        "as the baseline did: the difference between the two is the hop to the engine",
        "* server CPU: master, workers and engine, user and system, per request",
        "",
        "| row | side | req/s | p50 ms | server CPU µs/req | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, found_rows in (
        ("tiny /v2, 1 worker, c=1", {side: row(side, "tiny v2", 1) for side in heads}),
        ("tiny /v2, 1 worker, c=32", {side: row(side, "tiny v2", 32) for side in heads}),
        ("BiDAF hook style /score, 1 worker, c=32", bidaf),
    ):
        for side, found in found_rows.items():
            cpu = f"{found['server_cpu_us']:,.0f}" if "server_cpu_us" in found else ""
            lines.append(
                f"| {name} | {side} | {found['throughput']:,.0f} | {found['p50_ms']:.2f} | {cpu} | {found['errors']} |"
            )
    p50_ratio = tiny_head["p50_ms"] / tiny_base["p50_ms"]
    rate_ratio = tiny_head["throughput"] / tiny_base["throughput"]
    bidaf_ratio = bidaf["HEAD"]["throughput"] / bidaf["azmlinfsrv"]["throughput"]
    base_bidaf_ratio = bidaf["baseline"]["throughput"] / bidaf["azmlinfsrv"]["throughput"]
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, value, at_most in (
        ("tiny /v2 c=1: p50, HEAD / baseline", p50_ratio, True),
        ("tiny /v2 c=1: req/s, HEAD / baseline", rate_ratio, False),
        ("BiDAF hook 1w c=32: req/s, HEAD / azmlinfsrv", bidaf_ratio, False),
    ):
        met = value <= 1 if at_most else value >= 1
        lines.append(f"| {name} | {value:.2f} | {'<=' if at_most else '>='} 1 | {'yes' if met else '**no**'} |")
    lines += [f"| (the baseline, same run) BiDAF hook 1w c=32 / azmlinfsrv | {base_bidaf_ratio:.2f} | | |"]
    worker_p50 = row(PER_WORKER, "tiny v2", 1)["p50_ms"] / tiny_base["p50_ms"]
    worker_bidaf = bidaf[PER_WORKER]["throughput"] / bidaf["azmlinfsrv"]["throughput"]
    lines += [
        f"| (`{PER_WORKER}`, same run) tiny /v2 c=1: p50 / baseline | {worker_p50:.2f} | | |",
        f"| (`{PER_WORKER}`, same run) BiDAF hook 1w c=32 / azmlinfsrv | {worker_bidaf:.2f} | | |",
        "",
        AZMLINFSRV_NOTE,
        "",
    ]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
