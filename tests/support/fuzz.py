"""Hypothesis strategies for hostile requests to /score and /v2, and the check every answer must pass.

Each strategy draws one whole request (method, path, headers, body): well-formed ones, near misses
(wrong types in every field of a v2 request, shapes like [0, 2**70], huge integers, deep nesting,
lying lengths, gzip bombs, bad encodings) and noise.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Cases per in-process fuzz test (tests/test_fuzz.py); the real-server passes draw a tenth of it.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
REAL = settings(FUZZ, max_examples=max(50, EXAMPLES // 10))  # against a real server (tests/test_hostile.py)

MODELS = ["linear", "strings", "types", "classifier"]
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
INPUT_NAMES = ["x", "text", "in_f32", "in_i64", "in_b", "in_u8", "in_f16", "in_i8", "data"]
OUTPUT_NAMES = ["y", "norm", "id", "echo", "probs", "out_f32", "out_i64", "out_b", "nope"]
# Text that must never reach a client: tracebacks, source paths, onnxruntime's C++ internals.
LEAKS = ("Traceback", "site-packages", "/runtime/", '.py"', ".cc:", ".h:", "onnxruntime::", "Exception in ")


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def send(self, client: httpx.Client) -> httpx.Response:
        return client.request(self.method, self.path, headers=self.headers, content=self.body)


# Any code point, lone surrogates too: JSON can carry "\ud800", which UTF-8 cannot encode.
ANY_TEXT = st.characters(exclude_categories=())

# The strategies below are built once and cached: a strategy is validated and its emptiness worked out
# on its first draw, and a recursive one rebuilt for every draw spent most of each example's time there.


@functools.cache
def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(ANY_TEXT, max_size=8),
    )


@functools.cache
def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(),
        lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children)),
        max_leaves=5,
    )


@functools.cache
def numbers(rows: int, cols: int) -> st.SearchStrategy[Any]:
    number = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False), st.just(True))
    return st.lists(st.lists(number, min_size=cols, max_size=cols), min_size=rows, max_size=rows)


def deep(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '"a":' if opener == "{" else ""
    return ((opener + inner) * depth + "1" + closer * depth).encode()


@st.composite
def nasty_json_text(draw: st.DrawFn) -> bytes:
    """Text that breaks naive parsers: deep nesting, integers past 4300 digits, NaN, truncation, bad UTF-8."""
    kind = draw(st.sampled_from(["deep", "deep_object", "bigint", "nan", "truncated", "bytes", "value"]))
    if kind == "deep":
        return deep(draw(st.integers(1, 3000)))
    if kind == "deep_object":
        return deep(draw(st.integers(1, 3000)), "{")
    if kind == "bigint":
        return b'{"x": [[' + b"9" * draw(st.integers(4000, 6000)) + b", 1, 2, 3]]}"
    if kind == "nan":
        return b'{"x": [[NaN, Infinity, -Infinity, 1e400]]}'
    if kind == "truncated":
        text = json.dumps(draw(json_values())).encode()
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return json.dumps(draw(json_values())).encode()


@st.composite
def score_requests(draw: st.DrawFn) -> Req:
    """Requests to /score of the ``tensors`` script (hook style, all parsing done by the runtime)."""
    model = draw(st.sampled_from([*MODELS, "nope", ""]))
    query = f"?model={model}" if model else ""
    if draw(st.booleans()):
        name = draw(st.sampled_from(INPUT_NAMES))
        rows, cols = draw(st.integers(0, 3)), draw(st.integers(0, 6))
        body = json.dumps({name: draw(numbers(rows, cols))}).encode()
    else:
        body = draw(nasty_json_text())
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "OPTIONS"]))
    headers = {
        "Content-Type": draw(st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
    }
    if draw(st.booleans()):
        headers["x-request-id"] = draw(st.text(alphabet="abc-0123456789", max_size=120))
    return Req(method, "/score" + query, headers, body if method != "GET" else b"")


@functools.cache
def shapes() -> st.SearchStrategy[Any]:
    dim = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**63, 2**70, -1]), st.booleans(), st.text(max_size=2))
    return st.one_of(st.lists(dim, max_size=4), st.lists(st.integers(0, 3), min_size=1, max_size=3), json_values())


@st.composite
def v2_inputs(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """One input of a v2 request and its binary data (empty unless it declares binary_data_size)."""
    entry: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        entry["name"] = draw(st.one_of(st.sampled_from(INPUT_NAMES), st.text(max_size=4), json_values()))
    if draw(st.integers(0, 9)):
        entry["datatype"] = draw(st.one_of(st.sampled_from(DATATYPES), json_values()))
    shape = draw(st.one_of(st.lists(st.integers(0, 3), min_size=1, max_size=3), shapes()))
    if draw(st.integers(0, 9)):
        entry["shape"] = shape
    binary = b""
    if draw(st.booleans()):
        count = 1
        for dim in shape if isinstance(shape, list) else []:
            count *= dim if isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < 8 else 1
        entry["data"] = draw(
            st.one_of(
                st.lists(
                    st.one_of(st.floats(-10, 10), st.integers(-5, 5), st.booleans(), st.text(max_size=3)),
                    min_size=count,
                    max_size=count,
                ),
                json_values(),
            )
        )
    else:
        binary = draw(st.binary(max_size=64))
        size: Any = draw(st.one_of(st.just(len(binary)), st.integers(-1, 100), json_values()))
        entry["parameters"] = {"binary_data_size": size}
    if draw(st.integers(0, 4)) == 0:
        entry["parameters"] = draw(json_values())
    return entry, binary


# The test repository's models (tests/conftest.py model_repo): input name -> (datatype, columns).
SIGNATURES: dict[str, dict[str, tuple[str, int]]] = {
    "linear": {"x": ("FP32", 4)},
    "classifier": {"x": ("FP32", 5)},
    "strings": {"text": ("BYTES", 1)},
    "types": {
        f"in_{k}": (t, 2)
        for k, t in {
            "i8": "INT8",
            "u8": "UINT8",
            "i16": "INT16",
            "i32": "INT32",
            "i64": "INT64",
            "f16": "FP16",
            "f32": "FP32",
            "f64": "FP64",
            "b": "BOOL",
        }.items()
    },
}
NUMPY = {
    "BOOL": "?",
    "UINT8": "u1",
    "INT8": "i1",
    "INT16": "i2",
    "INT32": "i4",
    "INT64": "i8",
    "FP16": "f2",
    "FP32": "f4",
    "FP64": "f8",
}


@st.composite
def valid_inputs(draw: st.DrawFn, model: str) -> list[tuple[dict[str, Any], bytes]]:
    """Every input of ``model``, well formed, as JSON data or binary, with a few rows."""
    rows = draw(st.integers(1, 3))
    out = []
    for name, (datatype, cols) in SIGNATURES[model].items():
        count = rows * cols
        if datatype == "BYTES":
            values: list[Any] = draw(st.lists(st.text(ANY_TEXT, max_size=5), min_size=count, max_size=count))
        elif datatype == "BOOL":
            values = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        else:
            values = draw(st.lists(st.integers(0, 100), min_size=count, max_size=count))
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [rows, cols]}
        if draw(st.booleans()):
            entry["data"] = values
            out.append((entry, b""))
            continue
        if datatype == "BYTES":
            # A BYTES element is any bytes: lone surrogates (which ANY_TEXT draws) pass as the bytes Python would
            # write for them, not valid UTF-8, as a hostile client could send.
            encoded = [v.encode("utf-8", "surrogatepass") for v in values]
            raw = b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
        else:
            raw = np.asarray(values, dtype=NUMPY[datatype]).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        out.append((entry, raw))
    return out


MUTATIONS = ["none", "datatype", "shape", "drop", "parameters", "data", "zero_shape"]


@st.composite
def mutated(draw: st.DrawFn, inputs: list[tuple[dict[str, Any], bytes]]) -> list[tuple[dict[str, Any], bytes]]:
    """One field of one input replaced by something hostile (or nothing changed)."""
    mutation = draw(st.sampled_from(MUTATIONS)) if draw(st.booleans()) else "none"
    if mutation == "none" or not inputs:
        return inputs
    index = draw(st.integers(0, len(inputs) - 1))
    entry, raw = dict(inputs[index][0]), inputs[index][1]
    if mutation == "datatype":
        entry["datatype"] = draw(st.one_of(st.sampled_from(DATATYPES), json_values()))
    elif mutation == "shape":
        entry["shape"] = draw(shapes())
    elif mutation == "drop":
        entry.pop(draw(st.sampled_from(sorted(entry))))
    elif mutation == "parameters":
        entry["parameters"] = draw(json_values())
    elif mutation == "data":
        entry["data"] = draw(json_values())
    else:
        entry["shape"] = [0, draw(st.sampled_from([2**31, 2**63, 2**70, 10**30]))]
        entry.pop("data", None)
        entry["parameters"] = {"binary_data_size": 0}
        raw = b""
    return [*inputs[:index], (entry, raw), *inputs[index + 1 :]]


@st.composite
def v2_requests(draw: st.DrawFn) -> Req:
    model = draw(st.sampled_from([*MODELS, "nope"]))
    version = draw(st.sampled_from(["", "", "", "/versions/1", "/versions/2", "/versions/x"]))
    path = f"/v2/models/{model}{version}/infer"
    # Hypothesis draws the simplest value (0, False, the first choice) more often: make that the benign one.
    if draw(st.integers(0, 9)) == 9:
        return Req("POST", path, {"Content-Type": "application/json"}, draw(nasty_json_text()))
    if model in SIGNATURES and draw(st.integers(0, 3)) < 3:
        inputs = draw(mutated(draw(valid_inputs(model))))
    else:
        inputs = draw(st.lists(v2_inputs(), min_size=1, max_size=3))
    header: dict[str, Any] = {"inputs": [entry for entry, _ in inputs]}
    if draw(st.integers(0, 9)) == 9:
        header["inputs"] = draw(json_values())
    if draw(st.integers(0, 3)) == 3:
        header["outputs"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.one_of(st.sampled_from(OUTPUT_NAMES), json_values())},
                        optional={
                            "parameters": st.one_of(
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "classification": st.one_of(st.integers(-2, 10), json_values()),
                                        "binary_data": json_values(),
                                    },
                                ),
                                json_values(),
                            )
                        },
                    ),
                    max_size=3,
                ),
                json_values(),
            )
        )
    if draw(st.integers(0, 3)) == 3:
        header["parameters"] = draw(
            st.one_of(st.fixed_dictionaries({"binary_data_output": st.booleans()}), json_values())
        )
    if draw(st.integers(0, 3)) == 3:
        header["id"] = draw(st.one_of(st.text(max_size=8), json_values()))
    json_part = json.dumps(header).encode()
    binary = b"".join(data for _, data in inputs)
    headers = {"Content-Type": "application/json"}
    body = json_part
    if binary or draw(st.integers(0, 5)) == 5:
        body = json_part + binary
        length = str(len(json_part))
        if draw(st.integers(0, 3)) == 3:
            # Stripped: spaces around a header value are not part of it, and httpx refuses to send them.
            lying = st.text("0123456789x -", max_size=3).map(str.strip)
            length = draw(st.one_of(st.integers(-5, len(body) + 5).map(str), lying))
        headers["Inference-Header-Content-Length"] = length
    encoding = draw(st.sampled_from(["", "", "", "", "", "", "", "gzip", "deflate", "gzip, br"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        headers["Content-Encoding"] = encoding
    if encoding in ("gzip", "deflate") and draw(st.integers(0, 4)) == 4:
        body = body[: draw(st.integers(0, len(body)))]  # truncated stream
    return Req("POST", path, headers, body)


def check(req: Req, response: httpx.Response) -> None:
    """What every answer to hostile input must satisfy."""
    where = f"{req.method} {req.path} {req.headers} {req.body[:300]!r}"
    assert response.status_code < 500, f"{response.status_code} {response.text[:500]} for {where}"
    text = response.text
    assert not any(leak in text for leak in LEAKS), f"internal detail in {text[:500]} for {where}"
    if req.path.startswith("/v2") and response.status_code >= 400:
        assert "error" in response.json(), f"{response.status_code} {text[:300]} for {where}"


def swagger_operations_never_5xx(base: str) -> None:
    """schemathesis: every operation of the swagger served at ``base``, inputs drawn from its schemas; never a 5xx."""
    # Imported here: every pytest-xdist process collects the modules that import this one, and schemathesis
    # costs a tenth of a second to import; one process runs this.
    import schemathesis
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{base}/swagger.json?version=3")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/", "/score"} <= {op.path for op in operations}

    @settings(max_examples=max(30, EXAMPLES // 10), deadline=None, database=None)
    @given(case=st.one_of([op.as_strategy() for op in operations]))
    def call(case: Any) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    call()
