"""Long hypothesis fuzzing of real ``runtime serve`` servers, with concurrent clients and clients that hang up.

    python benchmarks/scripts/fuzz_servers.py --config default --examples 5000 --clients 4 --out /tmp/fuzz

Configurations: default (test models, 2 workers, model engine), worker (--engine worker), triton
(--backend triton --triton managed), bidaf, densenet, densenet_aml (the examples' scripts and models).
Each client process runs its own hypothesis loop (tests/support/fuzz.py strategies plus forms, raw bytes,
images) and records, without stopping: answers of 500 or above, internal detail in a body, v2 errors without
"error", and timeouts (a hang). One more process opens raw sockets and hangs up mid-body or before the answer.
After the load: the server log is searched for tracebacks, 'Unhandled error' and worker restarts; worker and
engine RSS and open file descriptors are compared with their values after a warm-up; /dev/shm runtime-*
regions are listed before and after the server stops; runtime_http_requests is compared with the requests
the clients completed. The findings go to OUT/<config>/report.json; the exit status is 1 if there are any.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import io
import json
import multiprocessing
import os
import random
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.fuzz import LEAKS, Req, json_values, nasty_json_text, score_requests, v2_requests  # noqa: E402
from tests.support.servers import ServerProcess, free_port, runtime_argv  # noqa: E402

TIMEOUT_S = 30


def configs(models: Path, examples: Path) -> dict[str, list[str]]:
    tensors = str(REPO / "tests" / "scripts" / "hostile" / "tensors.py")
    common = ["--header-timeout", "5", "--body-timeout", "5", "--max-body-bytes", str(1 << 20)]
    flags = {
        "default": ["--entry", tensors, "--model-dir", str(models), "--workers", "2"],
        "worker": ["--entry", tensors, "--model-dir", str(models), "--workers", "2", "--engine", "worker"],
        "triton": ["--entry", tensors, "--model-dir", str(models), "--backend", "triton", "--triton", "managed"],
        "bidaf": ["--entry", str(REPO / "examples/bidaf_onnx/score_bidaf.py"), "--model-dir", str(examples)],
        "densenet": ["--entry", str(REPO / "examples/densenet_onnx/score_densenet.py"), "--model-dir", str(examples)],
        "densenet_aml": [
            "--entry",
            str(REPO / "examples/densenet_onnx/score_densenet_aml.py"),
            "--model-dir",
            str(examples),
        ],
    }
    return {
        name: [*f, *common, "--workers", "2"] if "--workers" not in f else [*f, *common] for name, f in flags.items()
    }


def image(draw: st.DrawFn) -> bytes:
    from PIL import Image

    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "CMYK", "I;16"]))
    fmt = draw(st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]))
    pixels = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    try:
        img.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    cut = draw(st.integers(0, 5))
    if cut == 0:
        data = data[: draw(st.integers(0, len(data)))]
    elif cut == 1:
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    return data


@st.composite
def image_requests(draw: st.DrawFn) -> Req:
    data = image(draw) if draw(st.integers(0, 4)) else draw(st.binary(max_size=256))
    kind = draw(st.sampled_from(["raw", "raw", "json", "multipart", "gzip", "form"]))
    ctype = draw(st.sampled_from(["image/jpeg", "image/png", "application/octet-stream", "text/plain", ""]))
    if kind == "json":
        value: Any = base64.b64encode(data).decode() if draw(st.integers(0, 3)) else draw(json_values())
        body = json.dumps({draw(st.sampled_from(["image", "img", ""])): value}).encode()
        return Req("POST", "/score", {"Content-Type": "application/json"}, body)
    if kind == "multipart":
        boundary = "b0undary"
        name = draw(st.sampled_from(["image", "file", "x"]))
        parts = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="a.jpg"\r\n'
            f"Content-Type: {ctype or 'image/jpeg'}\r\n\r\n"
        ).encode()
        body = parts + data + f"\r\n--{boundary}--\r\n".encode()
        if draw(st.integers(0, 4)) == 0:
            body = body[: draw(st.integers(0, len(body)))]
        return Req("POST", "/score", {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body)
    if kind == "form":
        body = b"image=" + base64.b64encode(data) + b"&k=" + draw(st.binary(max_size=8))
        return Req("POST", "/score", {"Content-Type": "application/x-www-form-urlencoded"}, body)
    headers = {"Content-Type": ctype} if ctype else {}
    if kind == "gzip":
        headers["Content-Encoding"] = "gzip"
        data = gzip.compress(data)
    return Req(draw(st.sampled_from(["POST", "POST", "PUT", "GET"])), "/score", headers, data)


@st.composite
def bidaf_requests(draw: st.DrawFn) -> Req:
    if draw(st.integers(0, 3)) == 0:
        return Req("POST", "/score", {"Content-Type": "application/json"}, draw(nasty_json_text()))
    text = st.one_of(st.text(max_size=200), st.text(st.characters(exclude_categories=()), max_size=50))
    body: dict[str, Any] = {"context": draw(text), "query": draw(text)}
    if draw(st.integers(0, 4)) == 0:
        body[draw(st.sampled_from(["context", "query"]))] = draw(json_values())
    if draw(st.integers(0, 6)) == 0:
        body.pop(draw(st.sampled_from(["context", "query"])))
    raw = json.dumps(body).encode()
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    if draw(st.integers(0, 4)) == 0:
        raw = gzip.compress(raw)
        headers["Content-Encoding"] = "gzip"
    return Req("POST", "/score", headers, raw)


@st.composite
def raw_requests(draw: st.DrawFn) -> Req:
    """Raw bytes, forms and gzip to /score, and a few other routes."""
    path = draw(st.sampled_from(["/score", "/score?model=linear", "/score?model=types", "/v2/models/linear/infer"]))
    kind = draw(st.sampled_from(["bytes", "form", "multipart", "gzip_bomb", "gzip_bytes"]))
    headers: dict[str, str] = {}
    body = draw(st.binary(max_size=512))
    if kind == "form":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = "&".join(
            f"{k}={v}" for k, v in draw(st.dictionaries(st.text(max_size=5), st.text(max_size=8))).items()
        ).encode("utf-8", "surrogatepass")
    elif kind == "multipart":
        boundary = draw(st.sampled_from(["x", "b" * 70, ""]))
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n'.encode() + body
    elif kind == "gzip_bomb":
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "gzip, gzip", "br", "identity"]))
        body = gzip.compress(b"[" * draw(st.integers(0, 2_000_000)))
    elif kind == "gzip_bytes":
        headers["Content-Encoding"] = "gzip"
        headers["Content-Type"] = "application/json"
    return Req("POST", path, headers, body)


def strategy(config: str) -> st.SearchStrategy[Req]:
    if config == "bidaf":
        return st.one_of(bidaf_requests(), raw_requests())
    if config.startswith("densenet"):
        return st.one_of(image_requests(), raw_requests())
    return st.one_of(score_requests(), v2_requests(), v2_requests(), raw_requests())


def problems(req: Req, response: httpx.Response) -> list[str]:
    where = f"{req.method} {req.path} {req.headers} {req.body[:200]!r}"
    found = []
    text = response.text
    if response.status_code >= 500:
        found.append(f"{response.status_code} {text[:300]} for {where}")
    if any(leak in text for leak in LEAKS):
        found.append(f"leak {text[:300]} for {where}")
    if req.path.startswith("/v2") and response.status_code >= 400:
        try:
            ok = "error" in response.json()
        except ValueError:
            ok = False
        if not ok:
            found.append(f"v2 error without 'error': {response.status_code} {text[:200]} for {where}")
    return found


def client(url: str, config: str, examples: int, out: Path, draw_seed: int) -> None:
    findings = out.open("a")
    sent: dict[str, int] = {}

    # Each client its own seed: forked processes would otherwise all draw the same examples.
    @seed(draw_seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(req=strategy(config))
    def one(req: Req) -> None:
        try:
            response = req.send(http)
        except httpx.TimeoutException as exc:
            findings.write(
                json.dumps({"kind": "timeout", "what": f"{exc!r} {req.method} {req.path} {req.headers}"}) + "\n"
            )
            return
        except httpx.HTTPError as exc:
            findings.write(
                json.dumps({"kind": "transport", "what": f"{exc!r} {req.method} {req.path} {req.headers}"}) + "\n"
            )
            return
        route = req.path.split("?")[0]
        sent[route] = sent.get(route, 0) + 1
        for problem in problems(req, response):
            findings.write(json.dumps({"kind": "answer", "what": problem}) + "\n")
        findings.flush()

    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
        one()
    (out.parent / f"sent-{draw_seed}.json").write_text(json.dumps(sent))


def hangups(url: str, stop: Any, out: Path) -> None:
    """Requests cut short: mid-headers, mid-body, or whole but closed before the answer."""
    host, port = url.rsplit("//", 1)[1].split(":")
    rng = random.Random(0)
    counts: dict[str, int] = {}
    while not stop.is_set():
        body = json.dumps({"x": [[rng.random() for _ in range(4)] for _ in range(rng.randint(1, 64))]}).encode()
        path = rng.choice(["/score", "/v2/models/linear/infer", "/score?model=linear"])
        if path.startswith("/v2"):
            body = json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
            ).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        data = head.encode() + body
        cut = rng.choice(["headers", "body", "whole", "whole_wait", "pipelined", "chunked_cut"])
        try:
            with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
                if cut == "pipelined":
                    pipelined(sock, path, body, rng, out)
                elif cut == "chunked_cut":
                    chunked = chunk(gzip.compress(body) if rng.random() < 0.5 else body, rng)
                    encoding = "Content-Encoding: gzip\r\n" if chunked[1] else ""
                    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{encoding}\r\n"
                    sock.sendall(head.encode() + chunked[0][: rng.randint(0, len(chunked[0]) - 1)])
                elif cut == "headers":
                    sock.sendall(data[: rng.randint(1, len(head) - 1)])
                elif cut == "body":
                    sock.sendall(data[: len(head) + rng.randint(0, len(body) - 1)])
                else:
                    sock.sendall(data)
                if cut == "whole_wait":
                    time.sleep(rng.random() * 0.05)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError as exc:
            out.open("a").write(json.dumps({"kind": "hangup-connect", "what": repr(exc)}) + "\n")
        key = f"{path.split('?')[0]} {cut}"
        counts[key] = counts.get(key, 0) + 1
        time.sleep(0.01)
    (out.parent / "hangups.json").write_text(json.dumps(counts))


def chunk(body: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """``body`` in chunked transfer coding, cut at random places; whether it is gzip."""
    out, at = b"", 0
    while at < len(body):
        piece = body[at : at + rng.randint(1, max(1, len(body) // 3))]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        at += len(piece)
    return out + b"0\r\n\r\n", body[:2] == b"\x1f\x8b"


def pipelined(sock: socket.socket, path: str, body: bytes, rng: random.Random, out: Path) -> None:
    """Two to four requests sent back to back on one connection, some chunked and gzip; every answer read and
    checked (below 500, one per request, in time)."""
    import h11

    wanted = rng.randint(2, 4)
    data = b""
    for _ in range(wanted):
        if rng.random() < 0.5:
            encoded, gz = chunk(gzip.compress(body) if rng.random() < 0.5 else body, rng)
            extra = "Content-Encoding: gzip\r\n" if gz else ""
            data += f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode() + encoded
        else:
            data += f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    sock.sendall(data)
    conn = h11.Connection(h11.CLIENT)
    statuses: list[int] = []
    closed = False
    for _ in range(wanted):
        # h11 parses an answer only to a request it saw go out: tell it of one (the bytes went above).
        conn.send(h11.Request(method="POST", target=path, headers=[("Host", "x"), ("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                statuses.append(event.status_code)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        closed = conn.their_state is not h11.DONE or conn.our_state is h11.MUST_CLOSE
        if closed:
            break
        conn.start_next_cycle()
    if (len(statuses) != wanted and not closed) or any(code >= 500 for code in statuses):
        problem = {"kind": "pipelined", "what": f"{wanted} requests to {path}, answers {statuses}"}
        out.open("a").write(json.dumps(problem) + "\n")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found + [g for c in found for g in children(c)]


def resources(pid: int) -> dict[int, dict[str, Any]]:
    out = {}
    for p in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            out[p] = {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{p}/fd")), "cmd": cmd}
        except (OSError, AttributeError):
            pass
    return out


def shm() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("runtime-*")}


def metric_total(text: str, route: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("runtime_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(config: str, flags: list[str], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / config
    out.mkdir(parents=True, exist_ok=True)
    findings = out / "findings.jsonl"
    findings.write_text("")
    for stale in [out / "server.log", out / "hangups.json", *out.glob("sent-*.json")]:
        stale.unlink(missing_ok=True)
    shm_before = shm()
    port = free_port()
    server = ServerProcess(runtime_argv("serve", "--port", str(port), *flags), port, out / "server.log")
    started = time.monotonic()
    server.start(timeout=300)
    assert server.proc is not None
    try:
        return load(config, flags, args, server, out, findings, shm_before, started)
    finally:
        server.stop()


def load(
    config: str,
    flags: list[str],
    args: argparse.Namespace,
    server: ServerProcess,
    out: Path,
    findings: Path,
    shm_before: set[str],
    started: float,
) -> dict[str, Any]:
    assert server.proc is not None
    url = server.url
    # Warm-up: a few hundred examples from one client, then the baseline resources.
    client(url, config, 200, findings, args.seed + 999)
    time.sleep(2)
    before = resources(server.proc.pid)
    log_from = len(server.log())
    metrics_before = httpx.get(url + "/metrics").text
    per = args.examples // args.clients
    procs = [
        multiprocessing.Process(target=client, args=(url, config, per, findings, args.seed + i))
        for i in range(args.clients)
    ]
    load_start = time.monotonic()
    for p in procs:
        p.start()
    stop = multiprocessing.Event()
    hang = multiprocessing.Process(target=hangups, args=(url, stop, findings))
    hang.start()
    rss: list[dict[int, int]] = []  # every 10 s while the load runs: a leak grows through it, a warm-up does not
    while any(p.is_alive() for p in procs):
        rss.append({pid: r["rss_kib"] for pid, r in resources(server.proc.pid).items()})
        for p in procs:
            p.join(10 / len(procs))
    stop.set()
    hang.join()
    load_s = time.monotonic() - load_start
    time.sleep(5)  # let hung-up requests finish and connections close
    after = resources(server.proc.pid)
    metrics_after = httpx.get(url + "/metrics").text
    (out / "metrics-before.txt").write_text(metrics_before)
    (out / "metrics-after.txt").write_text(metrics_after)
    sent: dict[str, int] = {}
    for i in range(args.clients):
        path = out / f"sent-{args.seed + i}.json"
        for route, n in (json.loads(path.read_text()) if path.exists() else {}).items():
            sent[route] = sent.get(route, 0) + n
    counted = {
        route: metric_total(metrics_after, route) - metric_total(metrics_before, route)
        for route in ["/score", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"]
    }
    shm_running = shm() - shm_before
    log = server.log()[log_from:]  # from the end of the warm-up to the end of the load
    server.stop()
    time.sleep(1)
    # Only this server's: other servers on the machine (a test suite beside this run) come and go. The runtime
    # names its regions runtime-<kind>-<pid of the process that made it>-...
    ours = {str(server.proc.pid), *map(str, before), *map(str, after)}
    shm_left = {name for name in shm() - shm_before if ours & set(name.split("-"))}
    log_problems = [
        line
        for line in log.splitlines()
        if re.search(r"Traceback|Unhandled error|Worker \(pid|exited|restart|Booting worker|ERROR|CRITICAL", line)
    ]
    lines = [json.loads(line) for line in findings.read_text().splitlines() if line.strip()]
    report = {
        "config": config,
        "flags": flags,
        "examples": args.examples,
        "seed": args.seed,
        "clients": args.clients,
        "load_s": round(load_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "findings": len(lines),
        "finding_kinds": sorted({f["kind"] for f in lines}),
        "first_findings": lines[:20],
        "sent": sent,
        "metrics_counted": counted,
        "hangups": json.loads((out / "hangups.json").read_text()) if (out / "hangups.json").exists() else None,
        "rss_kib_during_load": rss,
        "resources_before": before,
        "resources_after": after,
        "shm_while_running": sorted(shm_running),
        "shm_left_after_stop": sorted(shm_left),
        "log_lines": len(log.splitlines()),
        "log_problems": log_problems[:50],
        "log_problem_count": len(log_problems),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def build_repositories(models: Path, examples: Path) -> None:
    """The test models (as tests/conftest.py's model_repo) and the examples' models, unless already there."""
    from tests.support import models as test_models
    from tests.support.examples import make_repository

    if not (models / "triton" / "classifier" / "config.pbtxt").exists():
        test_models.make_test_repository(models)
    if not (examples / "triton" / "bidaf_onnx" / "config.pbtxt").exists():
        make_repository(examples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--examples", type=int, default=5000, help="hypothesis examples per configuration")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--models", type=Path, default=Path("/tmp/runtime-fuzz/models"))
    parser.add_argument("--examples-repo", type=Path, default=Path("/tmp/runtime-fuzz/examples"))
    parser.add_argument("--seed", type=int, default=0, help="client i draws with hypothesis seed SEED + i")
    parser.add_argument("--out", type=Path, default=Path("/tmp/runtime-fuzz/out"))
    args = parser.parse_args(argv)
    build_repositories(args.models, args.examples_repo)
    table = configs(args.models, args.examples_repo)
    bad = 0
    for config in args.config:
        report = run(config, table[config], args)
        summary = {
            k: report[k]
            for k in [
                "config",
                "load_s",
                "findings",
                "finding_kinds",
                "sent",
                "metrics_counted",
                "log_problem_count",
                "shm_left_after_stop",
            ]
        }
        print(json.dumps(summary), flush=True)
        bad += bool(report["findings"] or report["log_problem_count"] or report["shm_left_after_stop"])
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
