"""Differential conformance: the same scripts and requests under azmlinfsrv 1.5.1 and ``runtime serve``.

Status, body and the contract headers must be identical, except for the
deliberate improvements listed in ``expected_from_reference`` (and in
docs/azureml-contract.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.azureml.swagger import without_security
from tests.conftest import SCRIPTS
from tests.support.fuzz import swagger_operations_never_5xx
from tests.support.servers import ServerProcess, start_azmlinfsrv_and_runtime, stop_all
from tests.support.venvs import AZMLINFSRV_REQUIREMENTS, ensure_venv

pytestmark = [pytest.mark.slow, pytest.mark.external]

TIMEOUT_MS = "1000"
CONTRACT_HEADERS = (
    "content-type",
    "x-ms-run-function-failed",
    "x-request-id",
    "x-ms-request-id",
    "x-ms-client-request-id",
    "traceid",
)
REQUEST_ID_HEADERS = ("x-request-id", "x-ms-request-id", "x-ms-client-request-id", "traceid")
ID_HEADERS = {"x-ms-client-request-id": "client-1", "TraceId": "trace-1"}
JSON = {"Content-Type": "application/json"}

REQUESTS: dict[str, dict[str, Any]] = {
    "valid": {"method": "POST", "headers": {**JSON, "X-Custom": "c"}, "content": b'{"a": 1, "b": "y"}'},
    "invalid_json": {"method": "POST", "headers": JSON, "content": b'{"a": 1,'},
    "empty_body": {"method": "POST", "headers": JSON, "content": b""},
    "get_query": {"method": "GET", "url_suffix": "?a=3&b=x"},
    "options": {"method": "OPTIONS"},
    "put": {"method": "PUT", "headers": JSON, "content": b"{}"},
    "long_request_id": {"method": "POST", "headers": {**JSON, "x-request-id": "r" * 101}, "content": b"{}"},
    "non_utf8": {"method": "POST", "headers": JSON, "content": b'{"a": "\xff\xfe"}'},
    "slow": {"method": "POST", "headers": JSON, "content": b'{"sleep": 3}'},
}


@dataclass
class Observed:
    status: int
    body: bytes
    headers: dict[str, str | None]
    has_exec_ms: bool

    def show(self) -> str:
        return f"{self.status} {self.body[:200]!r} {self.headers} exec_ms={self.has_exec_ms}"


def observe(base: str, name: str) -> Observed:
    spec = REQUESTS[name]
    call = Call(
        name, spec["method"], spec.get("url_suffix", ""), tuple(spec.get("headers", {}).items()), spec.get("content")
    )
    return observe_call(base, "", call, CONTRACT_HEADERS)


def side_by_side(reference: ServerProcess, ours: ServerProcess, look: Callable[[str], Observed]) -> list[Observed]:
    """``look`` at both servers at once: (azmlinfsrv's answer, ours); slow requests time out together."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(look, (reference.url, ours.url)))


def expected_from_reference(script: str, name: str, ref: Observed) -> Observed:
    """What the runtime answers where it deliberately differs from azmlinfsrv."""
    out = Observed(ref.status, ref.body, dict(ref.headers), ref.has_exec_ms)
    parses_body = script in ("undecorated", "slow_run")
    if parses_body and name in ("invalid_json", "empty_body") and ref.status == 500:
        # run() failed to parse a body that is not JSON: the client's fault, so 400 with the parser's message.
        body = REQUESTS[name]["content"].decode()
        try:
            json.loads(body)
        except json.JSONDecodeError as ex:
            out.status = 400
            out.body = json.dumps({"message": f"The request body is not valid JSON: {ex}"}).encode()
    if script == "schema" and name == "non_utf8":
        # azmlinfsrv's JSON parser crashes on non-UTF-8 bytes (500); the runtime says what is wrong.
        out.status = 400
        out.body = json.dumps(
            {
                "message": "Input cannot be decoded as UTF-8: 'utf-8' codec can't decode byte "
                "0xff in position 7: invalid start byte"
            }
        ).encode()
    if script == "not_serializable" and name in ("valid", "get_query", "slow", "empty_body", "invalid_json"):
        out.body = json.dumps(
            {
                "message": "run() returned a value that cannot be serialised to JSON: "
                "Object of type set is not JSON serializable"
            }
        ).encode()
        out.headers["x-ms-run-function-failed"] = "True"
    if ref.headers["x-request-id"] is None and ref.status in (404, 405):
        # The runtime adds the request ids to every response, not only to its Azure ML routes.
        out.headers["x-request-id"] = f"test-{name}"
        out.headers["x-ms-request-id"] = "client-1"
        out.headers["x-ms-client-request-id"] = "client-1"
        out.headers["traceid"] = "trace-1"
    return out


@pytest.fixture(scope="session")
def azmlinfsrv_python() -> Path:
    return ensure_venv("azmlinfsrv", AZMLINFSRV_REQUIREMENTS)


def start_pair(
    script: str, azml_python: Path, tmp: Path, extra_env: dict[str, str] | None = None
) -> tuple[ServerProcess, ServerProcess]:
    env = {"SCORING_TIMEOUT_MS": TIMEOUT_MS, "AML_APP_ROOT": str(tmp), **(extra_env or {})}
    return start_azmlinfsrv_and_runtime(SCRIPTS / "aml" / f"{script}.py", azml_python, tmp, env)


SERVED_SCRIPTS = [
    "undecorated",
    "request_headers",
    "rawhttp",
    "amlresponse",
    "cors",
    "schema",
    "run_raises",
    "slow_run",
    "not_serializable",
]

# -- one server pair per kind of run(), shared by the module -----------------------------------------
# Scripts whose run() azmlinfsrv calls the same way share a pair: tests/scripts/aml/modes.py serves the
# family and runs the member the test names (Pair.use). A run(data) family and a @rawhttp family (rawhttp
# is a switch for the whole server, read once at load), and inference-schema (it changes how run() is
# called for the whole script) on a pair of its own. request_headers.py joins the run(data) family: a
# run() that takes request_headers only adds that argument to the call (azmlinfsrv's
# UserScript._analyze_run), so modes.py's run() takes it and hands it on to the members that ask.
# The two families run with the CORS origins of their CORS case: with them set, azmlinfsrv answers
# REQUESTS with the same status, body and contract headers as without them (checked when this was set
# up); the forms, stream and print calls then carry the Access-Control-Allow-Origin that flask-cors sends
# without an Origin too, which is compared, and the "no_cors" case compares the schema pair, which runs
# without AML_CORS_ORIGINS.
CORS_ORIGINS = "https://a.example, https://b.example"
FAMILIES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "run_data": (
        ("undecorated", "request_headers", "run_raises", "slow_run", "not_serializable", "prints"),
        {"AML_CORS_ORIGINS": "*"},
    ),
    "rawhttp": (("rawhttp", "amlresponse", "cors", "forms", "stream"), {"AML_CORS_ORIGINS": CORS_ORIGINS}),
    "schema": (("schema",), {}),
}


def family_of(script: str) -> str:
    return next(name for name, (members, _) in FAMILIES.items() if script in members)


@dataclass
class Pair:
    """azmlinfsrv and the runtime on one family's script, ready."""

    reference: ServerProcess
    ours: ServerProcess
    env: dict[str, str]
    mode_file: Path | None
    idle_at: float = 0.0  # when a run() still sleeping from an earlier test has returned

    def use(self, script: str) -> tuple[ServerProcess, ServerProcess]:
        """Both servers answer as ``script`` from now on, once they are idle."""
        if self.mode_file is not None:
            self.mode_file.write_text(script)
        time.sleep(max(0.0, self.idle_at - time.monotonic()))
        return self.reference, self.ours


class Pairs:
    def __init__(self, azml_python: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.azml_python = azml_python
        self.tmp_path_factory = tmp_path_factory
        self.started: dict[str, Pair] = {}

    def get(self, script: str) -> Pair:
        family = family_of(script)
        if family not in self.started:
            members, cors = FAMILIES[family]
            tmp = self.tmp_path_factory.mktemp(family)
            mode_file = tmp / "mode" if len(members) > 1 else None
            env = {**cors, **({"MODES_SCRIPTS": ",".join(members), "MODES_FILE": str(mode_file)} if mode_file else {})}
            reference, ours = start_pair("modes" if mode_file else script, self.azml_python, tmp, env)
            self.started[family] = Pair(reference, ours, env, mode_file)
            reference.wait_ready()
            ours.wait_ready()
        return self.started[family]

    def stop(self) -> None:
        stop_all(s for pair in self.started.values() for s in (pair.reference, pair.ours))


@pytest.fixture(scope="module")
def pairs(azmlinfsrv_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pairs]:
    started = Pairs(azmlinfsrv_python, tmp_path_factory)
    yield started
    started.stop()


@pytest.fixture(params=SERVED_SCRIPTS)
def pair(request: pytest.FixtureRequest, pairs: Pairs) -> Iterator[tuple[str, ServerProcess, ServerProcess]]:
    shared = pairs.get(request.param)
    yield request.param, *shared.use(request.param)
    if request.param == "slow_run":
        # REQUESTS["slow"] keeps run() busy for 3 s on both servers, past the 1 s timeout: the next test waits.
        shared.idle_at = time.monotonic() + 3.5


def test_same_answers_as_azmlinfsrv(pair: tuple[str, ServerProcess, ServerProcess]) -> None:
    script, reference, ours = pair
    mismatches = []
    for name in REQUESTS:
        ref, got = side_by_side(reference, ours, lambda base, name=name: observe(base, name))
        want = expected_from_reference(script, name, ref)
        if got != want:
            mismatches.append(
                f"{script}/{name}:\n  azmlinfsrv: {ref.show()}\n  expected:   {want.show()}\n  runtime:    {got.show()}"
            )
    for version in ("2", "3", "3.1", "9"):
        ref = httpx.get(f"{reference.url}/swagger.json?version={version}", timeout=30)
        got = httpx.get(f"{ours.url}/swagger.json?version={version}", timeout=30)
        want_doc = ref.content
        if ref.status_code == 200:
            # azmlinfsrv declares Bearer security that it does not enforce; without --auth-key we declare none.
            doc = ref.json()
            without_security(doc)
            want_doc = json.dumps(doc).encode()
        if (ref.status_code, want_doc) != (got.status_code, got.content):
            mismatches.append(
                f"{script}/swagger {version}: azmlinfsrv {ref.status_code} {ref.text[:300]}\n"
                f"  runtime {got.status_code} {got.text[:300]}"
            )
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("family", [name for name, (members, _) in FAMILIES.items() if len(members) > 1])
def test_each_script_of_a_family_answers_as_itself(family: str, pairs: Pairs) -> None:
    """The guard on shared pairs: a mode that did not switch would compare one script several times and
    pass. Each script of a family answers the valid request differently, on both servers."""
    members = FAMILIES[family][0]
    for side in (0, 1):
        answers = {}
        for script in members:
            server = pairs.get(script).use(script)[side]
            seen = observe(server.url, "valid")
            answers[script] = (seen.status, seen.body, tuple(seen.headers.items()))
        assert len(set(answers.values())) == len(members), answers


def test_swagger_operations_never_5xx(pairs: Pairs) -> None:
    """schemathesis on the runtime's swagger for the inference-schema script (a fuzz test: tests/test_fuzz.py)."""
    swagger_operations_never_5xx(pairs.get("schema").use("schema")[1].url)


def test_init_failure_exits_3_on_both(azmlinfsrv_python: Path, tmp_path: Path) -> None:
    reference, ours = start_pair("init_raises", azmlinfsrv_python, tmp_path)
    assert reference.wait_exit(90) == 3
    assert ours.wait_exit(90) == 3
    log = ours.log()
    assert "init_raises.py" in log and "init()" in log and "model file missing" in log, log


# -- bodies, streams, CORS and print(): a few requests each, on the pair of the script's family -------

BOUNDARY = "conformance-boundary"
MULTIPART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="label"\r\n\r\ncat\r\n'
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="tags"\r\n\r\na\r\n'
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="tags"\r\n\r\nb\r\n'
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="image"; filename="cat.jpg"\r\n'
    "Content-Type: image/jpeg\r\n\r\nnot really a jpeg\r\n"
    f"--{BOUNDARY}--\r\n"
).encode()
MULTIPART_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
PREFLIGHT = {
    "Origin": "https://a.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "Content-Type, Authorization, X-Custom",
}
CORS_HEADERS = (
    "allow",
    "access-control-allow-origin",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-max-age",
    "vary",
)


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    suffix: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None
    path: str = "/score"


@dataclass(frozen=True)
class Case:
    script: str
    calls: tuple[Call, ...]
    env: tuple[tuple[str, str], ...] = ()  # what the script's family runs with (FAMILIES) must include these


CASES = {
    "forms": Case(
        "forms",
        (
            Call("multipart_files_first", "POST", "?order=files_first", tuple(MULTIPART_HEADERS.items()), MULTIPART),
            Call("multipart_data_first", "POST", "?order=data_first", tuple(MULTIPART_HEADERS.items()), MULTIPART),
            Call("urlencoded", "POST", "?order=data_first", tuple(FORM_HEADERS.items()), b"name=Zo%C3%AB&n=1&n=2"),
            Call("urlencoded_files_first", "POST", "", tuple(FORM_HEADERS.items()), b"a=1"),
        ),
    ),
    "stream": Case(
        "stream",
        (Call("generator", "GET", "?count=4"), Call("sse", "GET", "?kind=sse"), Call("empty", "GET", "?count=0")),
    ),
    "prints": Case("prints", (Call("print", "POST", "", tuple(JSON.items()), b'{"hello": "log"}'),)),
    "cors_rawhttp": Case(
        "rawhttp",
        (
            Call("preflight", "OPTIONS", "", tuple(PREFLIGHT.items())),
            Call("post", "POST", "", (("Origin", "https://b.example"), *JSON.items()), b"{}"),
            Call("no_origin", "POST", "", tuple(JSON.items()), b"{}"),
        ),
        (("AML_CORS_ORIGINS", CORS_ORIGINS),),
    ),
    "cors_undecorated": Case(
        "undecorated",
        (
            Call("preflight", "OPTIONS", "", tuple(PREFLIGHT.items())),
            Call("other_origin", "OPTIONS", "", (("Origin", "https://evil.example"), *tuple(PREFLIGHT.items())[1:])),
            Call(
                "put_preflight",
                "OPTIONS",
                "",
                (("Origin", "https://a.example"), ("Access-Control-Request-Method", "PUT")),
            ),
            Call("post", "POST", "", (("Origin", "https://a.example"), *JSON.items()), b"{}"),
            # Flask answers OPTIONS on its other routes itself: preflights for the health and swagger routes.
            Call("swagger_preflight", "OPTIONS", "", tuple(PREFLIGHT.items()), path="/swagger.json"),
            Call("health_preflight", "OPTIONS", "", tuple(PREFLIGHT.items()), path="/"),
        ),
        (("AML_CORS_ORIGINS", "*"),),
    ),
    # Without AML_CORS_ORIGINS: no CORS headers, whatever the request asks (the two families run with it).
    "no_cors": Case(
        "schema",
        (
            Call("preflight", "OPTIONS", "", tuple(PREFLIGHT.items())),
            Call("post", "POST", "", (("Origin", "https://a.example"), *JSON.items()), b"{}"),
        ),
    ),
}


def observe_call(
    base: str, case: str, call: Call, names: tuple[str, ...] = (*CONTRACT_HEADERS, *CORS_HEADERS)
) -> Observed:
    """What ``call`` (of CASES[case]; of REQUESTS when case is "") gets: status, body and the headers ``names``."""
    response = httpx.request(
        call.method,
        base + call.path + call.suffix,
        headers={
            "x-request-id": "-".join(("test", *filter(None, (case, call.name)))),
            **ID_HEADERS,
            **dict(call.headers),
        },
        content=call.content,
        timeout=30,
    )
    headers = {h: response.headers.get(h) for h in names}
    if headers.get("allow"):  # Werkzeug lists the methods of a set: the order changes from run to run
        headers["allow"] = ", ".join(sorted(m.strip() for m in headers["allow"].split(",")))
    return Observed(
        status=response.status_code,
        body=response.content,
        headers=headers,
        has_exec_ms="x-ms-run-fn-exec-ms" in response.headers,
    )


def expected_for_call(call: Call, ref: Observed) -> Observed:
    out = Observed(ref.status, ref.body, dict(ref.headers), ref.has_exec_ms)
    if call.name.endswith("files_first") and ref.status == 200:
        # Flask's get_data() returns b"" once the form was parsed; the runtime returns the body in any order.
        body = json.loads(ref.body)
        assert body["data_length"] == 0
        body["data_length"] = len(call.content or b"")
        out.body = json.dumps(body).encode()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bodies_streams_cors_and_print_as_azmlinfsrv(case: str, pairs: Pairs) -> None:
    spec = CASES[case]
    shared = pairs.get(spec.script)
    assert dict(spec.env).items() <= shared.env.items(), f"{case} needs {spec.env}: see FAMILIES"
    assert case != "no_cors" or "AML_CORS_ORIGINS" not in shared.env, "no_cors needs a pair without CORS"
    reference, ours = shared.use(spec.script)
    mismatches = []
    for call in spec.calls:
        ref, got = side_by_side(reference, ours, lambda base, call=call: observe_call(base, case, call))
        want = expected_for_call(call, ref)
        if got != want:
            mismatches.append(
                f"{case}/{call.name}:\n  azmlinfsrv: {ref.show()}\n"
                f"  expected:   {want.show()}\n  runtime:    {got.show()}"
            )
    assert not mismatches, "\n".join(mismatches)
    if case == "prints":
        # Both capture print() into the log; the runtime's line carries the request id.
        assert 'scoring {"hello": "log"}' in reference.log()
        assert '[test-prints-print] - scoring {"hello": "log"}' in ours.log()
