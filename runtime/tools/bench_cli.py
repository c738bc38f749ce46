"""``runtime bench``'s command line: flags (every default stated), the target, the exit status.

Exit status: 0 when most requests succeeded, 1 when most failed (the error bodies are shown),
2 for a usage mistake or a URL that cannot be reached at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import mimetypes
import socket
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from runtime.cliparse import positive

DEFAULT_CONCURRENCY = "1,2,4,8,16,32,64,128,256"
DEFAULT_DURATION_S = 5.0
DEFAULT_WARMUP_S = 1.0
GENERATOR_CONTENT_TYPE = "application/json"
# Content types mimetypes does not know everywhere.
EXTRA_TYPES = {".json": "application/json", ".npy": "application/octet-stream", ".bin": "application/octet-stream"}
EXIT_MOSTLY_FAILED = 1
EXIT_USAGE = 2


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    steps = len(DEFAULT_CONCURRENCY.split(","))
    bench: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="load-test a /score URL or a v2 model over a concurrency sweep",
        description=(
            "Closed-loop load over a concurrency sweep; a table (or JSON/CSV) of req/s, p50/p90/p99 latency, errors "
            f"with a sample body, and the client's own CPU. The default sweep takes about "
            f"{steps * (DEFAULT_DURATION_S + DEFAULT_WARMUP_S):.0f} s ({steps} steps of {DEFAULT_WARMUP_S:g} s "
            f"warm-up + {DEFAULT_DURATION_S:g} s). Exit status: 0; 1 when most requests failed; 2 for a usage "
            "error or a URL that cannot be reached."
        ),
    )
    bench.add_argument("--url", required=True, help="a /score URL, or the server's base URL with --v2-model")
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--payload", help="a file whose bytes are every request's body")
    source.add_argument("--generator", help="MODULE:FUNCTION (or file.py:FUNCTION) returning each body")
    source.add_argument("--v2-model", help="a model: random binary tensors from its metadata, as tritonclient sends")
    bench.add_argument("--batch", type=positive, default=1, help="batch size of --v2-model requests (default: 1)")
    bench.add_argument(
        "--content-type",
        help="Content-Type of --payload/--generator bodies (default: from the payload's extension, "
        f".jpg image/jpeg, .json application/json, ...; application/octet-stream when unknown; "
        f"{GENERATOR_CONTENT_TYPE} for --generator)",
    )
    bench.add_argument("--header", action="append", default=[], help="NAME:VALUE, repeatable (default: none)")
    bench.add_argument(
        "--concurrency", default=DEFAULT_CONCURRENCY, help="the sweep, comma-separated (default: %(default)s)"
    )
    bench.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="seconds measured per step (default: %(default)s)"
    )
    bench.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        help="seconds before measuring, per step (default: %(default)s)",
    )
    bench.add_argument(
        "--processes",
        type=positive,
        default=1,
        help="client processes sharing each step's connections, so that the client is not the bottleneck on a "
        "big machine (default: %(default)s)",
    )
    bench.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="report format (default: %(default)s)"
    )
    bench.add_argument("--output", help="write the report to this file (default: stdout)")
    bench.add_argument(
        "--plot",
        help="a PNG of p50 and p99 latency against throughput, and beside it (-batches.png) the batch sizes the "
        "server's /metrics reported per step (needs the [bench] extra; default: none)",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress display on stderr (default: shown)")
    return bench


def content_type(payload: str) -> str:
    suffix = Path(payload).suffix.lower()
    guessed = EXTRA_TYPES.get(suffix) or mimetypes.guess_type(payload)[0]
    return guessed or "application/octet-stream"


def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why nothing can be sent to ``url`` (a refused connection, an unknown host), or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url} is not an http:// URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as ex:
        return f"cannot connect to {parts.hostname}:{port}: {ex.strerror or ex}"


def _fail(message: str) -> int:
    print(f"runtime bench: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_bench(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.tools import bench

    try:
        concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        return _fail(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not concurrencies or min(concurrencies) <= 0:
        return _fail(f"--concurrency must be positive integers, got {args.concurrency!r}")
    needed = ["rich"] + (["matplotlib"] if args.plot else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return _fail(f"needs {', '.join(missing)}: pip install 'scoring-runtime[bench]'")
    problem = unreachable(args.url)
    if problem:
        return _fail(f"{problem} (is the server running? start it with: runtime serve ...)")
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            return _fail(f"--header must be NAME:VALUE, got {header!r}")
        headers[name.strip()] = value.strip()
    if args.v2_model:
        try:
            target = bench.v2_target(args.url.rstrip("/"), args.v2_model, args.batch)
        except OSError as ex:  # urllib's HTTPError and URLError
            return _fail(f"cannot read model {args.v2_model!r}'s metadata from {args.url}: {ex}")
        target.headers.update(headers)
    elif args.payload:
        try:
            body = Path(args.payload).read_bytes()
        except OSError as ex:
            return _fail(f"cannot read --payload {args.payload}: {ex.strerror}")
        headers.setdefault("Content-Type", args.content_type or content_type(args.payload))
        target = bench.Target(args.url, lambda: body, headers, f"{args.url} with {args.payload}")
    else:
        headers.setdefault("Content-Type", args.content_type or GENERATOR_CONTENT_TYPE)
        try:
            generator = bench.load_generator(args.generator)
        except (ImportError, AttributeError, OSError) as ex:
            return _fail(f"cannot load --generator {args.generator}: {type(ex).__name__}: {ex}")
        target = bench.Target(args.url, generator, headers, f"{args.url} ({args.generator})")
    expected = bench.expected_seconds(concurrencies, args.duration, args.warmup)
    if not args.quiet:
        print(
            f"runtime bench: {len(concurrencies)} step(s) of {args.warmup:g} s warm-up + {args.duration:g} s, "
            f"about {expected:.0f} s; {target.headers.get('Content-Type', '')} to {target.url}",
            file=sys.stderr,
        )
    started = time.monotonic()
    if args.processes > 1:
        steps = bench.sweep_processes(target, concurrencies, args.duration, args.warmup, args.processes, not args.quiet)
    else:
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
        from runtime.tools.plot import batch_sizes_png, latency_throughput_png

        name = target.description or target.url
        machine = bench.machine()
        where = f"{machine['cpus']} CPUs, {machine['platform']}"
        latency_throughput_png({name: steps}, Path(args.plot), f"{name}: latency against throughput", where)
        batches = {f"c={s.concurrency}": s.batch_sizes for s in steps if s.batch_sizes}
        if batches:
            path = Path(args.plot)
            batch_sizes_png(batches, path.with_name(f"{path.stem}-batches.png"), f"{name}: batch sizes", where)
    failed = sum(sum(s.errors.values()) for s in steps)
    ok = sum(s.requests for s in steps) - failed
    errors = bench.error_report(steps)
    if errors:
        print(f"errors (status x count: a response body):\n{errors}", file=sys.stderr)
    if not args.quiet:
        print(f"runtime bench: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failed > ok:
        print(f"runtime bench: {failed} of {failed + ok} requests failed", file=sys.stderr)
        return EXIT_MOSTLY_FAILED
    return 0
