"""Hostile requests against a running server, each reduced to one outcome ("431", "408 after 2.0 s", ...).

Used by tests/test_hostile.py, and to fill the "Hostile input" table of docs/reliability.md against
azmlinfsrv 1.5.1 and the runtime side by side:

    python -m tests.support.hostile            # starts both servers, prints the Markdown table
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gzip
import json
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.servers import REPO, start_azmlinfsrv_and_runtime

SCRIPTS = REPO / "tests" / "scripts"
JSON = {"Content-Type": "application/json"}


def raw_exchange(url: str, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send raw bytes on a fresh connection; what comes back before the server closes or ``wait`` passes."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        if data:
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received, time.monotonic() - started


def raw_status(url: str, head: bytes) -> str:
    """Send a request head (httpx takes minutes to build 100,000 headers) and read the status line back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # The server may answer and close before reading everything: the answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + b"Content-Length: 2\r\n\r\n{}")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            return "connection reset"
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"


def many_headers(count: int) -> bytes:
    return b"POST /score HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(count))


def stalled(url: str, data: bytes, wait: float) -> str:
    received, elapsed = raw_exchange(url, data, wait)
    if not received and elapsed >= wait - 0.5:
        return f"no answer in {wait:.0f} s"
    status = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "closed"
    return f"{status} after {elapsed:.1f} s"


def post(url: str, path: str = "/score", **kwargs: object) -> httpx.Response:
    return httpx.post(url + path, timeout=60, **kwargs)  # type: ignore[arg-type]


def status(response: httpx.Response) -> str:
    return str(response.status_code)


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def gzip_bomb(decoded_mib: int) -> bytes:
    """A gzip body of about decoded_mib KiB that decodes to ``decoded_mib`` MiB of JSON whitespace.

    One member of 1 MiB of spaces, repeated: gzip allows members one after another, and building it
    costs one compression of 1 MiB.
    """
    member = gzip.compress(b" " * (1 << 20), compresslevel=9)
    return gzip.compress(b'{"inputs": [', 9) + member * decoded_mib + gzip.compress(b"]}", 9)


def png(width: int, height: int) -> bytes:
    """A black grayscale PNG, compressed row by row (14000 x 14000 is 200 KB, built without 196 MB in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class Probe:
    name: str
    run: Callable[[str, float], str]  # (base URL, stall wait) -> outcome
    script: str = "undecorated"  # the tests/scripts/aml script both servers run for it


PROBES = [
    Probe("101 header fields", lambda u, w: status(post(u, headers={f"x-h{i}": "v" for i in range(101)}))),
    Probe("100,000 header fields", lambda u, w: raw_status(u, many_headers(100_000))),
    Probe("one 9,000-byte header", lambda u, w: status(post(u, headers={"x-big": "v" * 9000}))),
    Probe(
        "one 16 MiB header",
        lambda u, w: raw_status(u, b"POST /score HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (16 << 20) + b"\r\n"),
    ),
    Probe("5,000-byte URL", lambda u, w: status(post(u, params={"q": "v" * 5000}))),
    Probe(
        "TraceId of 8,000 characters",
        lambda u, w: (lambda r: f"{r.status_code}, echoed {len(r.headers.get('traceid', ''))} chars")(
            post(u, content=b"{}", headers={"TraceId": "t" * 8000})
        ),
    ),
    Probe(
        "Content-Length: 1000, 10 bytes sent",
        lambda u, w: stalled(u, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789", w),
    ),
    Probe("headers never finished", lambda u, w: stalled(u, b"POST /score HTTP/1.1\r\nHost: x\r\nX-Slow: 1", w)),
    Probe("connection opened, nothing sent", lambda u, w: stalled(u, b"", w)),
    Probe(
        "NaN and Infinity in, run() echoes",
        lambda u, w: (lambda r: f"{r.status_code} {r.content[10:31].decode()}")(
            post(u, content=b'{"a": NaN, "b": Infinity}', headers=JSON)
        ),
    ),
    Probe("run() returns JSON nested 480 deep", lambda u, w: status(post(u, content=deep_json(480), headers=JSON))),
    Probe(
        "inference-schema: JSON nested 2,000 deep",
        lambda u, w: status(post(u, content=b'{"a": ' + deep_json(2000) + b"}", headers=JSON)),
        "schema",
    ),
    Probe(
        "inference-schema: 5,000-digit integer",
        lambda u, w: status(post(u, content=b'{"a": ' + b"9" * 5000 + b"}", headers=JSON)),
        "schema",
    ),
    Probe(
        "inference-schema: 1 MiB gzip body, Content-Encoding: gzip",
        lambda u, w: status(post(u, content=gzip_bomb(1024), headers={**JSON, "Content-Encoding": "gzip"})),
        "schema",
    ),
]


STALLS = ("Content-Length: 1000, 10 bytes sent", "headers never finished", "connection opened, nothing sent")


def run_probes(url: str, wait: float, script: str) -> dict[str, str]:
    """Every probe for ``script``: one after the other, then the stalling ones together (each up to ``wait`` s).

    azmlinfsrv's sync worker serves one connection at a time: a stall running beside the other probes
    would hold them all.
    """
    chosen = [p for p in PROBES if p.script == script]
    outcomes = {p.name: _outcome(p, url, wait) for p in chosen if p.name not in STALLS}
    stalls = [p for p in chosen if p.name in STALLS]
    if stalls:
        with concurrent.futures.ThreadPoolExecutor(len(stalls)) as pool:
            futures = {p.name: pool.submit(_outcome, p, url, wait) for p in stalls}
            outcomes.update({name: future.result() for name, future in futures.items()})
    return outcomes


def _outcome(probe: Probe, url: str, wait: float) -> str:
    try:
        return probe.run(url, wait)
    except httpx.TimeoutException:
        return "no answer in 60 s"
    except TimeoutError:
        return "no answer in 30 s"
    except (httpx.HTTPError, OSError) as ex:
        return f"connection error ({type(ex).__name__})"


def main() -> int:
    from tests.support.venvs import AZMLINFSRV_REQUIREMENTS, ensure_venv

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", type=float, default=75, help="how long a stalled request is watched (75 s)")
    args = parser.parse_args()
    azml_python = ensure_venv("azmlinfsrv", AZMLINFSRV_REQUIREMENTS)
    rows: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for script in dict.fromkeys(p.script for p in PROBES):
            reference, ours = start_azmlinfsrv_and_runtime(SCRIPTS / "aml" / f"{script}.py", azml_python, Path(tmp))
            reference.wait_ready()
            ours.wait_ready()
            try:
                theirs, mine = run_probes(reference.url, args.wait, script), run_probes(ours.url, args.wait, script)
            finally:
                reference.stop()
                ours.stop()
            rows.update({name: (mine[name], theirs[name]) for name in mine})
    print("| Request | runtime | azmlinfsrv 1.5.1 |\n|---|---|---|")
    for probe in PROBES:
        mine, theirs = rows[probe.name]
        print(f"| {probe.name} | {mine} | {theirs} |")
    json.dump(rows, sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
