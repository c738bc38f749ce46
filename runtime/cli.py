"""``runtime``: the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from runtime import __version__
from runtime.errors import STARTUP_EXIT_CODE
from runtime.logs import configure
from runtime.settings import Settings


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in [0, 65535], got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtime", description="Scoring runtime for Azure ML entry scripts.")
    parser.add_argument("--version", action="version", version=f"runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve an entry script at POST /score")
    serve.add_argument("--entry", help="the entry script, score.py (env AZUREML_ENTRY_SCRIPT)")
    serve.add_argument("--model-dir", help="the model directory (env AZUREML_MODEL_DIR)")
    serve.add_argument("--host", help="address to bind (env RUNTIME_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to bind (env SERVER_PORT; default 5001)")
    serve.add_argument("--workers", type=_positive, help="Gunicorn worker processes (env WORKER_COUNT)")
    serve.add_argument(
        "--concurrency", type=_positive, help="requests in flight per worker (env RUNTIME_CONCURRENCY; 32)"
    )
    serve.add_argument("--timeout-ms", type=_positive, help="scoring timeout (env SCORING_TIMEOUT_MS)")
    serve.add_argument(
        "--max-body-bytes", type=_positive, help="largest request body (env RUNTIME_MAX_BODY_BYTES; 100 MiB)"
    )
    serve.add_argument(
        "--max-concurrent-requests",
        type=_positive,
        help="requests one worker admits at once; more get 429 (env MAX_CONCURRENT_REQUESTS; 256)",
    )
    serve.add_argument(
        "--max-body-bytes-in-flight",
        type=_positive,
        help="request-body bytes one worker holds at once; more get 429 "
        "(env RUNTIME_MAX_BODY_BYTES_IN_FLIGHT; 200 MiB)",
    )
    serve.add_argument(
        "--max-requests",
        type=_non_negative,
        help="recycle a worker after N requests (env RUNTIME_MAX_REQUESTS; 0: off)",
    )
    serve.add_argument(
        "--max-requests-jitter",
        type=_non_negative,
        help="add 0..N to --max-requests per worker (env RUNTIME_MAX_REQUESTS_JITTER; 0)",
    )
    serve.add_argument(
        "--max-worker-memory",
        type=_non_negative,
        help="recycle a worker whose RSS exceeds N MiB (env RUNTIME_MAX_WORKER_MEMORY_MB; 0: off)",
    )
    serve.add_argument(
        "--keepalive-max-age",
        type=_non_negative,
        help="close keep-alive connections older than N s (env RUNTIME_KEEPALIVE_MAX_AGE_S; 2; 0: never)",
    )
    serve.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="plugin module or .py path (repeatable; env RUNTIME_PLUGINS)",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (env AZUREML_LOG_LEVEL)")
    serve.add_argument(
        "--backend", choices=["onnxruntime", "triton"], help="where infer runs (env RUNTIME_BACKEND; onnxruntime)"
    )
    serve.add_argument("--triton-url", help="host:port of Triton's HTTP endpoint (env TRITON_URL; localhost:8000)")
    serve.add_argument(
        "--triton",
        choices=["remote", "managed"],
        help="remote: use the Triton at --triton-url; managed: start one for --model-dir (env RUNTIME_TRITON_MODE)",
    )
    serve.add_argument("--tritonserver", help="the tritonserver binary for --triton managed (env TRITONSERVER_PATH)")

    triton = sub.add_parser("triton", help="the Triton server side")
    triton_sub = triton.add_subparsers(dest="triton_command", required=True)
    install = triton_sub.add_parser("install", help="install tritonserver (nvidia-pytriton) in a venv of its own")
    install.add_argument("--home", help="where (env RUNTIME_TRITON_HOME; ~/.cache/scoring-runtime/triton)")

    bench = sub.add_parser("bench", help="load-test a /score URL or a v2 model over a concurrency sweep")
    bench.add_argument("--url", required=True, help="a /score URL, or the server's base URL with --v2-model")
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--payload", help="a file whose bytes are every request's body")
    source.add_argument("--generator", help="MODULE:FUNCTION (or file.py:FUNCTION) returning each body")
    source.add_argument("--v2-model", help="a model: random binary tensors from its metadata, as tritonclient sends")
    bench.add_argument("--batch", type=_positive, default=1, help="batch size of --v2-model requests (1)")
    bench.add_argument("--content-type", default="application/json", help="for --payload/--generator")
    bench.add_argument("--header", action="append", default=[], help="NAME:VALUE (repeatable)")
    bench.add_argument("--concurrency", default="1,2,4,8,16,32,64,128,256", help="the sweep, comma-separated")
    bench.add_argument("--duration", type=float, default=5.0, help="seconds measured per step (5)")
    bench.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring, per step (1)")
    bench.add_argument("--format", choices=["table", "json", "csv"], default="table")
    bench.add_argument("--output", help="write the report here instead of stdout")
    bench.add_argument("--plot", help="a PNG of p50 latency against throughput")
    bench.add_argument("--quiet", action="store_true", help="no progress display")

    check = sub.add_parser("check", help="show how the models of a repository will be served")
    check.add_argument("--model-dir", required=True, help="the model directory (holding triton/ or models)")
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from runtime.serving.check import check_repository

    return check_repository(args.model_dir, sys.stdout)


# CLI flag -> environment variable: flags override the environment, and workers read the environment.
FLAG_ENV = {
    "entry": "AZUREML_ENTRY_SCRIPT",
    "model_dir": "AZUREML_MODEL_DIR",
    "host": "RUNTIME_HOST",
    "port": "SERVER_PORT",
    "workers": "WORKER_COUNT",
    "concurrency": "RUNTIME_CONCURRENCY",
    "timeout_ms": "SCORING_TIMEOUT_MS",
    "max_body_bytes": "RUNTIME_MAX_BODY_BYTES",
    "log_level": "AZUREML_LOG_LEVEL",
    "backend": "RUNTIME_BACKEND",
    "triton_url": "TRITON_URL",
    "triton": "RUNTIME_TRITON_MODE",
    "tritonserver": "TRITONSERVER_PATH",
    "max_concurrent_requests": "MAX_CONCURRENT_REQUESTS",
    "max_body_bytes_in_flight": "RUNTIME_MAX_BODY_BYTES_IN_FLIGHT",
    "max_requests": "RUNTIME_MAX_REQUESTS",
    "max_requests_jitter": "RUNTIME_MAX_REQUESTS_JITTER",
    "max_worker_memory": "RUNTIME_MAX_WORKER_MEMORY_MB",
    "keepalive_max_age": "RUNTIME_KEEPALIVE_MAX_AGE_S",
}


def apply_flags(args: argparse.Namespace) -> None:
    for flag, env in FLAG_ENV.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag in ("entry", "model_dir"):
            value = os.path.abspath(value)
        os.environ[env] = str(value)
    if args.plugin:
        existing = [p for p in os.environ.get("RUNTIME_PLUGINS", "").split(",") if p]
        resolved = [os.path.abspath(p) if p.endswith(".py") else p for p in args.plugin]
        os.environ["RUNTIME_PLUGINS"] = ",".join(existing + resolved)
    if os.environ.get("AZUREML_MODEL_DIR"):
        os.environ["AZUREML_MODEL_DIR"] = os.path.abspath(os.environ["AZUREML_MODEL_DIR"])


def cmd_serve(args: argparse.Namespace) -> int:
    apply_flags(args)
    try:
        settings = Settings.from_env()
    except ValueError as ex:
        print(f"runtime serve: {ex}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    entry = settings.entry_path
    if entry is None and not settings.model_dir and settings.backend != "triton":
        print("runtime serve: give --entry score.py and/or --model-dir DIR", file=sys.stderr)
        return 2
    if entry is not None:
        if not os.path.isfile(entry):
            print(f"runtime serve: entry script {entry} does not exist", file=sys.stderr)
            return STARTUP_EXIT_CODE
        # Workers resolve the script the same way, whatever their working directory.
        os.environ["AZUREML_ENTRY_SCRIPT"] = entry
    from runtime.http.server import serve

    if settings.backend == "triton" and settings.triton_mode == "managed":
        return serve_with_managed_triton(settings)
    serve(settings)
    return 0


def serve_with_managed_triton(settings: Settings) -> int:
    """Start tritonserver for the repository, point the workers at it, stop it when serving ends."""
    from runtime.errors import StartupError
    from runtime.http.server import serve
    from runtime.serving.tritonserver import ManagedTriton, find_tritonserver

    if not settings.model_dir:
        print("runtime serve: --triton managed needs --model-dir", file=sys.stderr)
        return 2
    try:
        triton = ManagedTriton(settings.model_dir, find_tritonserver(settings.tritonserver_path))
        triton.start()
    except StartupError as ex:
        print(f"runtime serve: {ex}", file=sys.stderr)
        return STARTUP_EXIT_CODE
    os.environ["TRITON_URL"] = triton.url
    try:
        serve(Settings.from_env())
    finally:
        triton.stop()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from runtime.tools import bench

    try:
        concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        print(f"runtime bench: --concurrency must be integers, got {args.concurrency!r}", file=sys.stderr)
        return 2
    headers = {"Content-Type": args.content_type}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    if args.v2_model:
        target = bench.v2_target(args.url.rstrip("/"), args.v2_model, args.batch)
    elif args.payload:
        body = Path(args.payload).read_bytes()
        target = bench.Target(args.url, lambda: body, headers, f"{args.url} with {args.payload}")
    else:
        target = bench.Target(args.url, bench.load_generator(args.generator), headers, f"{args.url} ({args.generator})")
    steps = asyncio.run(bench.sweep(target, concurrencies, args.duration, args.warmup, not args.quiet))
    report = {
        "table": lambda: bench.as_table(steps),
        "json": lambda: bench.as_json(target, steps),
        "csv": lambda: bench.as_csv(steps),
    }[args.format]()
    if args.output:
        Path(args.output).write_text(report + "\n")
    else:
        print(report)
    if args.plot:
        from runtime.tools.plot import latency_throughput_png

        points = [(s.throughput, s.latency_ms["p50"], s.concurrency) for s in steps]
        latency_throughput_png({target.description or target.url: points}, Path(args.plot))
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime.serving.tritonserver import install

    binary = install(Path(args.home) if args.home else None)
    print(binary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "triton":
        return cmd_triton(args)
    if args.command == "bench":
        return cmd_bench(args)
    raise AssertionError(args.command)  # pragma: no cover
