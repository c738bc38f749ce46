"""One request per test model, in the JSON that tests/scripts/backend/engine_hook.py and engine_run.py take, and
onnxruntime in this process as the reference their answers must equal (tests/test_engine.py and
tests/test_instance_processes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

RNG = np.random.default_rng(11)
# One request per model: inputs, and the numpy dtype each travels as in JSON.
CASES: dict[str, tuple[dict[str, np.ndarray], dict[str, str]]] = {
    "linear": ({"x": RNG.standard_normal((3, 4)).astype(np.float32)}, {"x": "float32"}),
    "strings": ({"text": np.array([["hello"], ["wörld"], ["world"]], dtype=object)}, {"text": "object"}),
    "types": (
        {"in_i64": np.array([[2**40, -3], [7, 0]], dtype=np.int64), "in_f32": np.ones((2, 2), np.float32)},
        {"in_i64": "int64", "in_f32": "float32"},
    ),
}


def session(repo: Path, model: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / "triton" / model / "1" / "model.onnx"))


def full_inputs(repo: Path, model: str, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``types`` takes one input per datatype: zeros for those a case leaves out."""
    if model != "types":
        return given
    dtypes = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
              "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}  # fmt: skip
    rows = next(iter(given.values())).shape[0]
    return {i.name: given.get(i.name, np.zeros((rows, 2), dtypes[i.type])) for i in session(repo, model).get_inputs()}


def onnx_reference(repo: Path, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime in this process: what the engine must return."""
    loaded = session(repo, model)
    feeds = {n: v.astype(str) if v.dtype == object else v for n, v in inputs.items()}
    names = [o.name for o in loaded.get_outputs()]
    return dict(zip(names, loaded.run(names, feeds), strict=True))


def as_body(model: str, inputs: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, Any]:
    all_dtypes = {n: dtypes.get(n, str(v.dtype)) for n, v in inputs.items()}
    return {"model": model, "inputs": {n: v.tolist() for n, v in inputs.items()}, "dtypes": all_dtypes}


def assert_equal_outputs(got: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        expected = value.astype(str) if value.dtype.kind in "OU" else value
        assert np.array_equal(np.asarray(got[name], dtype=expected.dtype), expected), name


def assert_score_equals_onnxruntime(url: str, repo: Path, model: str) -> None:
    """POST /score at ``url`` with ``model``'s case: the outputs equal onnxruntime's in this process."""
    given, dtypes = CASES[model]
    inputs = full_inputs(repo, model, given)
    response = httpx.post(url + "/score", json=as_body(model, inputs, dtypes), timeout=30)
    assert response.status_code == 200, response.text
    assert_equal_outputs(response.json()["outputs"], onnx_reference(repo, model, inputs))
