"""Tiny /v2 at c=1 with a client that costs next to nothing: the servers' own latency, without the load generator's.

    python benchmarks/scripts/c1_latency.py [--baseline 505bb0e] [--rounds 3] [--requests 2000]

``benchmarks.baseline`` measures c=1 with ``runtime bench``'s client, a Python HTTP client that takes
about as much CPU a request as the server, on the same two cores. Here one blocking socket sends the
same request bytes again and again on one keep-alive connection and reads each answer, so the p50 is
the server's: the baseline's ``runtime serve``, this code as shipped (its model engine) and this code
with ``--engine worker``, 1 worker each, taking turns round by round. Per side: p50, p90, and the CPU
microseconds a request of the workers and of the engine (``/proc``, over the measured requests).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.baseline import serve  # noqa: E402
from benchmarks.run import build_models, workloads  # noqa: E402
from benchmarks.scripts.engine_cpu import roles  # noqa: E402
from benchmarks.suite import git, prepare  # noqa: E402
from runtime.tools import bench  # noqa: E402

WARMUP_REQUESTS = 300


def request_bytes(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{lines}"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_all(port: int, request: bytes, count: int) -> list[float]:
    """Seconds per request, one at a time on a keep-alive connection; every answer must be a 200."""
    latencies = []
    sock = connect(port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(request)
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                answer += chunk
                end = answer.find(b"\r\n\r\n")
                if end >= 0:
                    head = answer[:end].lower()
                    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(answer) >= end + 4 + length:
                        break
            latencies.append(time.perf_counter() - started)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"not a 200: {answer[:300]!r}")
            if b"\r\nconnection: close" in head:  # --keepalive-max-age ended this connection: a new one
                sock.close()
                sock = connect(port)
    finally:
        sock.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="505bb0e")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    baseline = prepare(git("rev-parse", args.baseline))
    sides = {
        "baseline": (baseline / ".venv" / "bin" / "python", baseline, ()),
        "HEAD": (Path(sys.executable), REPO, ()),
        "HEAD --engine worker": (Path(sys.executable), REPO, ("--engine", "worker")),
    }
    with tempfile.TemporaryDirectory(prefix="c1-latency-") as folder:
        work = Path(folder)
        model_dir = work / "models"
        build_models(model_dir, small=False)
        tiny = {w.name: w for w in workloads(model_dir)}["tiny"]
        body, headers = bench.v2_body(tiny.v2_inputs or {})
        servers = {
            name: serve(python, root, model_dir, work, "tiny", *extra) for name, (python, root, extra) in sides.items()
        }
        p50s: dict[str, list[float]] = {name: [] for name in sides}
        try:
            for round_ in range(args.rounds):
                for name, server in servers.items():
                    request = request_bytes(server.port, body, headers)
                    send_all(server.port, request, WARMUP_REQUESTS)
                    before = roles(server)
                    latencies = sorted(send_all(server.port, request, args.requests))
                    after = roles(server)
                    p50, p90 = latencies[len(latencies) // 2] * 1e3, latencies[int(len(latencies) * 0.9)] * 1e3
                    p50s[name].append(p50)
                    cpu = {role: (after[role] - before[role]) / args.requests * 1e6 for role in after}
                    print(
                        f"round {round_ + 1} {name:22s} p50 {p50:.3f} ms  p90 {p90:.3f} ms"
                        f"  CPU/request: workers {cpu['workers']:.0f} us, engine {cpu['engine']:.0f} us",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()
    base = statistics.median(p50s["baseline"])
    for name in ("HEAD", "HEAD --engine worker"):
        print(f"p50, {name} / baseline (medians of the rounds): {statistics.median(p50s[name]) / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
