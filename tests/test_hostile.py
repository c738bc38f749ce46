"""Hostile input against a real Gunicorn server: header abuse, stalled connections, bombs, malformed JSON and v2,
then the real-server pass of the fuzz tests (tests/test_fuzz.py holds the in-process ones).

One server for the module (hook-style script, the test models, 2 s read timeouts); every test only reads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.http.body import INFLATE_FLOOR
from runtime.serving.platforms import Device
from runtime.serving.platforms.onnx import OnnxPlatform
from runtime.serving.repository import load_repository
from runtime.serving.runner import InferenceFailed, ModelRunner
from runtime.settings import Settings
from tests.conftest import SCRIPTS
from tests.support import hostile
from tests.support.engine import worker_pids
from tests.support.fuzz import REAL, Req, check, score_requests, v2_requests
from tests.support.inprocess import InProcess
from tests.support.rss import PeakRss
from tests.support.servers import ServerProcess, start_module_server

pytestmark = pytest.mark.slow

TIMEOUT_S = 2
LINEAR = "/v2/models/linear/infer"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The fuzz pass below sends bodies of a few KiB at most: the default body limit suits it and the bombs here.
    entry, timeout = str(SCRIPTS / "hostile" / "tensors.py"), str(TIMEOUT_S)
    args = ["--entry", entry, "--model-dir", str(model_repo), "--header-timeout", timeout, "--body-timeout", timeout]
    process = start_module_server(tmp_path_factory, *args)
    yield process
    process.stop()


def worker_pid(server: ServerProcess) -> int:
    assert server.proc is not None
    (pid,) = worker_pids(server.proc.pid)  # the model engine is a child too
    return pid


def v2_json(inputs: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


X = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("probe", "outcome"),
    [
        ("101 header fields", "431"),
        ("100,000 header fields", "431"),
        ("one 9,000-byte header", "431"),
        ("one 16 MiB header", "431"),
        ("5,000-byte URL", "414"),
        ("TraceId of 8,000 characters", "431, echoed 0 chars"),
    ],
)
def test_header_limits(server: ServerProcess, probe: str, outcome: str) -> None:
    (chosen,) = [p for p in hostile.PROBES if p.name == probe]
    assert chosen.run(server.url, 10) == outcome
    assert httpx.get(server.url + "/").status_code == 200


def test_header_limit_bodies_name_the_problem(server: ServerProcess) -> None:
    many = httpx.post(server.url + "/score", headers={f"x-h{i}": "v" for i in range(101)})
    assert many.json() == {"message": "The request has more than 100 header fields."}
    assert many.headers["connection"] == "close"
    v2 = httpx.post(server.url + LINEAR, headers={"x-big": "v" * 9000})
    assert v2.status_code == 431 and "exceeds 8190 bytes" in v2.json()["error"]


@pytest.mark.parametrize(
    "probe", ["Content-Length: 1000, 10 bytes sent", "headers never finished", "connection opened, nothing sent"]
)
def test_stalled_connections_are_closed(server: ServerProcess, probe: str) -> None:
    (chosen,) = [p for p in hostile.PROBES if p.name == probe]
    started = time.monotonic()
    outcome = chosen.run(server.url, 30)
    assert outcome.startswith("408 after "), outcome
    assert TIMEOUT_S - 0.5 <= time.monotonic() - started < TIMEOUT_S + 3


def test_a_slow_body_that_keeps_sending_is_not_cut(server: ServerProcess) -> None:
    """The body timeout is the gap between two reads (nginx's client_body_timeout), not the whole upload."""
    body = json.dumps({"x": [[1, 2, 3, 4]]}).encode()
    head = (
        "POST /score?model=linear HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        for i in range(0, len(body), 8):
            time.sleep(TIMEOUT_S / 4)  # the whole body takes about 1.5 timeouts
            sock.sendall(body[i : i + 8])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_a_body_refused_unread_on_a_connection_being_closed_still_gets_its_answer(server: ServerProcess) -> None:
    """A keep-alive connection older than --keepalive-max-age is answered with ``Connection: close``. When
    that answer refuses a body the client is still sending (here a 413 from its Content-Length), the server
    lingers: the client gets the 413, not a connection reset."""
    limit = Settings().max_body_bytes
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(Settings().keepalive_max_age_s + 0.2)
        sock.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * limit}\r\n\r\n".encode())
        chunk = b"x" * (64 << 10)
        for _ in range(64):  # 4 MiB more, as a client that writes its whole body before it reads
            sock.sendall(chunk)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower(), head
    assert json.loads(body) == {"message": f"Request body of {2 * limit} bytes exceeds the limit of {limit} bytes."}


def responses(stream: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each HTTP/1.1 response in ``stream``, in order (bodies with a Content-Length)."""
    found = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])  # type: ignore[index]
        found.append((int(head.split(None, 2)[1]), rest[:length]))
        stream = rest[length:]
    return found


def test_a_malformed_request_pipelined_behind_one_in_flight_is_answered_after_it(server: ServerProcess) -> None:
    """HTTP/1.1 answers in order: the request in flight gets its 200 first, then the malformed one its 400, and the
    connection closes. uvicorn answered the malformed one at once, which a pipelining client took for the first
    request's answer; the late answer then came onto a connection closed for writing ('Unhandled error' and a 500
    in the metrics, found by fuzzing). A malformed body (chunked) and a malformed request line, each behind one
    good request."""
    score = b'{"x": [[1, 2, 3, 4]]}'
    good = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(score), score)
    bad_body = b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n"
    bad_line = b"POST /score HTTP/1.1 trailing\r\nHost: x\r\n\r\n"
    before = httpx.get(server.url + "/metrics").text.count('status="500"')
    for bad in (bad_body, bad_line):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(good + good + bad + good)  # the last one is never read: the connection ends at the 400
            answer = b""
            while data := sock.recv(65536):
                answer += data
        answers = responses(answer)
        assert [status for status, _ in answers] == [200, 200, 400], answer
        assert answers[0][1] == answers[1][1] and json.loads(answers[0][1]), answer  # the model's outputs, twice
        assert b"connection: close" in answer[answer.rindex(b"HTTP/1.1 400") :].lower(), answer
    time.sleep(0.5)
    assert httpx.get(server.url + "/metrics").text.count('status="500"') == before
    log = server.log()
    assert "Unhandled error" not in log and "after write_eof" not in log, log[-2000:]


def test_client_abort_is_not_an_error(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        time.sleep(0.3)
    time.sleep(0.5)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics
    assert 'route="/score",status="499"' in metrics
    log = server.log()
    assert "ClientDisconnect" not in log and "Unhandled error" not in log, log[-2000:]


def test_gzip_bomb_is_refused_before_it_is_decoded(server: ServerProcess) -> None:
    bomb = hostile.gzip_bomb(970)  # 1 MiB that decodes to 970 MiB
    assert len(bomb) <= 1 << 20
    with PeakRss(worker_pid(server)) as peak:
        response = httpx.post(server.url + LINEAR, content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code == 413, response.text
    assert "times the" in response.json()["error"]
    print(f"RSS growth {peak.growth_mib:.1f} MiB")  # the figure in docs/reliability.md (pytest -s)
    assert peak.growth_mib < 100, f"the worker grew by {peak.growth_mib:.0f} MiB"


def test_gzip_and_deflate_bodies_are_decoded(server: ServerProcess) -> None:
    plain = v2_json([X])
    for encoding, body in (("gzip", gzip.compress(plain)), ("deflate", __import__("zlib").compress(plain))):
        response = httpx.post(server.url + LINEAR, content=body, headers={"Content-Encoding": encoding})
        assert response.status_code == 200, response.text
    # Below the 1 MiB floor any ratio is accepted: a small request of zeros compresses far beyond 16:1.
    zeros = v2_json([{**X, "shape": [1, 4], "data": [0, 0, 0, 0]}], pad=" " * (INFLATE_FLOOR // 2))
    response = httpx.post(server.url + LINEAR, content=gzip.compress(zeros), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("encoding", "status"), [("br", 415), ("gzip, gzip", 415), ("compress", 415), ("identity", 200)]
)
def test_other_encodings(server: ServerProcess, encoding: str, status: int) -> None:
    response = httpx.post(server.url + LINEAR, content=v2_json([X]), headers={"Content-Encoding": encoding})
    assert response.status_code == status, response.text
    if status == 415:
        assert "unsupported Content-Encoding" in response.json()["error"]


def test_truncated_gzip_is_a_400(server: ServerProcess) -> None:
    body = gzip.compress(v2_json([X]))[:-10]
    response = httpx.post(server.url + LINEAR, content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "truncated" in response.json()["error"]


DEEP = b"[" * 2000 + b"]" * 2000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (DEEP, "nested too deeply"),
        (b'{"x": [[' + b"9" * 5000 + b", 1, 2, 3]]}", "4300 digits"),
        (b'{"x": [[1, 2', "could not be decoded as JSON"),
    ],
)
def test_score_json_failures_are_400(server: ServerProcess, body: bytes, message: str) -> None:
    response = httpx.post(server.url + "/score?model=linear", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


MALFORMED_V2 = {
    "datatype as a list": v2_json([{**X, "datatype": ["FP32"]}]),
    "datatype as an object": v2_json([{**X, "datatype": {"a": 1}}]),
    "request parameters as a list": v2_json([X], parameters=[1]),
    "input parameters as a list": v2_json([{**X, "parameters": [1]}]),
    "output parameters as a list": v2_json([X], outputs=[{"name": "y", "parameters": [1]}]),
    "shape [0, 2**70], JSON": v2_json([{**X, "shape": [0, 2**70], "data": []}]),
    "shape [0, 2**70], BYTES binary": v2_json(
        [{"name": "text", "datatype": "BYTES", "shape": [0, 2**70], "parameters": {"binary_data_size": 0}}]
    ),
    "shape with a boolean": v2_json([{**X, "shape": [True, 4]}]),
    "5000-digit integer": b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": ['
    + b"9" * 5000
    + b"]}]}",
    "nested 2000 deep": b'{"inputs": ' + DEEP + b"}",
    "id as an object": v2_json([X], id={"a": 1}),
    "classification as a boolean": v2_json([X], outputs=[{"name": "y", "parameters": {"classification": True}}]),
    "binary_data_size as a boolean": v2_json(
        [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": True}}]
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED_V2))
def test_malformed_v2_requests_are_4xx_with_error(server: ServerProcess, name: str) -> None:
    response = httpx.post(server.url + LINEAR, content=MALFORMED_V2[name], headers=JSON)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"}


def test_onnxruntime_failure_detail_goes_to_the_log_only(model_repo: Path) -> None:
    """onnxruntime's message (source paths, C++ signatures) is the log's detail; the client's message is clean."""
    config = next(c for c in load_repository(model_repo) if c.name == "linear")
    model = ModelRunner(config, "1", [OnnxPlatform().load(config, "1", Device("cpu"), 1)])
    with pytest.raises(InferenceFailed) as info:
        asyncio.run(model._execute(0, [{"x": np.zeros((1, 5), np.float32)}]))  # past validation: a wrong width
    assert info.value.message == "inference failed for model 'linear' version 1; the server log has the details"
    assert "invalid dimensions" in info.value.detail.lower(), info.value.detail
    assert info.value.log_line("r-1").startswith("request r-1: 500 inference failed for model 'linear'")
    assert info.value.detail in info.value.log_line("r-1")


def test_nan_and_infinity_follow_azmlinfsrv(server: ServerProcess) -> None:
    """Python's json both ways, as azmlinfsrv: NaN/Infinity are accepted and written as bare tokens."""
    score = httpx.post(server.url + "/score?model=linear", content=b'{"x": [[NaN, 1, 2, 3]]}', headers=JSON)
    assert score.status_code == 200 and b"NaN" in score.content
    v2 = httpx.post(server.url + LINEAR, content=v2_json([{**X, "data": [float("inf"), 0, 0, 0]}]))
    assert v2.status_code == 200 and b"Infinity" in v2.content


def test_deep_output_of_run_is_answered_like_azmlinfsrv() -> None:
    """run() returns JSON nested 480 deep: azmlinfsrv answers 200, and so must the built-in postprocess."""
    with InProcess(Settings(entry_script=str(SCRIPTS / "hostile" / "echo_parsed.py"))) as app:
        for depth in (480, 900):
            body = b"[" * depth + b"1" + b"]" * depth
            response = app.request("POST", "/score", content=body, headers=JSON)
            assert response.status_code == 200, (depth, response.text)
            assert response.content == body.replace(b"[", b"[").replace(b"]", b"]")


def test_binary_bytes_tensor_of_many_empty_elements_is_bounded(server: ServerProcess) -> None:
    """1 MiB of zero-length BYTES elements: 262,144 Python objects, well under 100 MiB."""
    count = (1 << 20) // 4
    raw = struct.pack("<I", 0) * count
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [count, 1], "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    ).encode()
    with PeakRss(worker_pid(server)) as peak:
        response = httpx.post(
            server.url + "/v2/models/strings/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
            timeout=60,
        )
    assert response.status_code in (200, 400), response.text
    print(f"RSS growth {peak.growth_mib:.1f} MiB")  # the figure in docs/reliability.md (pytest -s)
    assert peak.growth_mib < 100, f"the worker grew by {peak.growth_mib:.0f} MiB"


def test_hostile_input_settings_come_from_the_environment_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from runtime.cli import build_parser, build_settings

    defaults = Settings.from_env({})
    assert (defaults.max_header_count, defaults.max_header_bytes, defaults.max_url_bytes) == (100, 8190, 4094)
    assert (defaults.header_timeout_s, defaults.body_timeout_s, defaults.max_inflate_ratio) == (60, 60, 16)
    assert defaults.auth_keys == ()
    with pytest.raises(ValueError, match="RUNTIME_HEADER_TIMEOUT_S must be at least 1, got 0"):
        Settings.from_env({"RUNTIME_HEADER_TIMEOUT_S": "0"})
    names = ["RUNTIME_MAX_HEADERS", "RUNTIME_MAX_HEADER_BYTES", "RUNTIME_MAX_URL_BYTES", "RUNTIME_HEADER_TIMEOUT_S"]
    names += ["RUNTIME_BODY_TIMEOUT_S", "RUNTIME_MAX_INFLATE_RATIO", "RUNTIME_AUTH_KEY", "RUNTIME_AUTH_KEY_FILE"]
    for name in names:
        monkeypatch.setenv(name, "")  # restored after the test
    keys = tmp_path / "keys"
    keys.write_text("from-file\n")
    flags = ["--max-headers", "5", "--max-header-bytes", "6", "--max-url-bytes", "7", "--header-timeout", "8"]
    flags += ["--body-timeout", "9", "--max-inflate-ratio", "10", "--auth-key", "k", "--auth-key-file", str(keys)]
    flagged = build_settings(build_parser().parse_args(["serve", *flags]))
    assert (flagged.max_header_count, flagged.max_header_bytes, flagged.max_url_bytes) == (5, 6, 7)
    assert (flagged.header_timeout_s, flagged.body_timeout_s, flagged.max_inflate_ratio) == (8, 9, 10)
    assert flagged.auth_keys == ("k", "from-file")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as session:
        yield session


@REAL
@given(req=st.one_of(score_requests(), v2_requests()))
def test_real_server_fuzzed(client: httpx.Client, req: Req) -> None:
    """The fuzz tests' requests (tests/test_fuzz.py) through httptools and the limited protocol."""
    check(req, req.send(client))


def test_no_unhandled_errors_were_logged(server: ServerProcess) -> None:
    """Runs last of the tests on the server: nothing above reached the generic 500 handler or uvicorn's, no worker
    died, and the server still answers."""
    assert httpx.get(server.url + "/").status_code == 200
    log = server.log()
    assert "Unhandled error" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert "Worker exiting" not in log and "WORKER TIMEOUT" not in log, log[-3000:]
