"""Small ONNX models built with the onnx helper API (deterministic weights) for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
BIAS = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def _save(graph: onnx.GraphProto, path: Path, opsets: list[onnx.OperatorSetIdProto] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=opsets or OPSET, producer_name="runtime-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def linear_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """What the linear model computes, row by row, in numpy."""
    return {"y": x @ WEIGHTS + BIAS, "norm": np.sum(x * x, axis=1, keepdims=True)}


def make_linear(path: Path, batch: int | str = "N") -> Path:
    """x FP32 [N,4] -> y = x @ W + b [N,3], norm = sum(x^2) [N,1]; each output row depends on its input row."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("ReduceSumSquare", ["x"], ["norm"], axes=[1], keepdims=1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
            helper.make_tensor_value_info("norm", TensorProto.FLOAT, [batch, 1]),
        ],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    return _save(graph, path, [helper.make_opsetid("", 12)])


def make_scaled(path: Path) -> Path:
    """x FP32 [N,4], scale FP32 [N,1] -> y = x * scale; scale has a default of [[2]] (an initializer a request
    may override: onnxruntime's overridable initializers)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["N", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array([[2.0]], np.float32), "scale")],
    )
    return _save(graph, path, [helper.make_opsetid("", 12)])


def make_strings(path: Path) -> Path:
    """text BYTES [N,1] -> id INT64 [N,1] (a vocabulary lookup, ai.onnx.ml) and echo BYTES [N,1]."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["id"],
                domain="ai.onnx.ml",
                keys_strings=["hello", "world"],
                values_int64s=[1, 2],
                default_int64=0,
            ),
            helper.make_node("Identity", ["text"], ["echo"]),
        ],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [
            helper.make_tensor_value_info("id", TensorProto.INT64, ["N", 1]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 1]),
        ],
    )
    return _save(graph, path, [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])


TYPED = {
    "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8,
    "i16": TensorProto.INT16,
    "i32": TensorProto.INT32,
    "i64": TensorProto.INT64,
    "f16": TensorProto.FLOAT16,
    "f32": TensorProto.FLOAT,
    "f64": TensorProto.DOUBLE,
    "b": TensorProto.BOOL,
}


def make_identity_types(path: Path) -> Path:
    """One identity per datatype: in_<t> [N,2] -> out_<t> [N,2]."""
    nodes = [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in TYPED]
    graph = helper.make_graph(
        nodes,
        "types",
        [helper.make_tensor_value_info(f"in_{k}", t, ["N", 2]) for k, t in TYPED.items()],
        [helper.make_tensor_value_info(f"out_{k}", t, ["N", 2]) for k, t in TYPED.items()],
    )
    return _save(graph, path)


def make_classifier(path: Path, classes: int = 5) -> Path:
    """x FP32 [N,classes] -> probs = softmax(x) [N,classes], for the classification extension."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["probs"], axis=1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", classes])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
    )
    return _save(graph, path)


def make_sleepy_linear(path: Path) -> Path:
    """Like linear, but each execution costs measurable time (a large MatMul chain), so batches form."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4, 512)).astype(np.float32) / 4
    back = rng.standard_normal((512, 3)).astype(np.float32) / 32
    square = rng.standard_normal((512, 512)).astype(np.float32) / 32
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h0"])]
    for i in range(8):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "S"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", ["h8", "B"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "sleepy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(big, "A"),
            numpy_helper.from_array(square, "S"),
            numpy_helper.from_array(back, "B"),
        ],
    )
    return _save(graph, path)


def make_test_repository(root: Path) -> Path:
    """The tests' model repository (Azure ML layout, ``triton/``) under ``root``, with one test model of each kind
    (tests/conftest.py's model_repo; benchmarks/scripts/fuzz_servers.py serves it too)."""
    repo = root / "triton"
    make_linear(repo / "linear" / "1" / "model.onnx")
    make_strings(repo / "strings" / "1" / "model.onnx")
    make_identity_types(repo / "types" / "1" / "model.onnx")
    make_classifier(repo / "classifier" / "1" / "model.onnx")
    (repo / "classifier" / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    (repo / "classifier" / "config.pbtxt").write_text(
        'max_batch_size: 8\noutput [{ name: "probs" data_type: TYPE_FP32 dims: [5] label_filename: "labels.txt" }]\n'
    )
    make_sleepy_linear(repo / "sleepy" / "1" / "model.onnx")
    (repo / "sleepy" / "config.pbtxt").write_text(
        "max_batch_size: 32\ninstance_group [{ count: 1 kind: KIND_CPU }]\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    )
    make_sleepy_linear(repo / "sleepy_unbatched" / "1" / "model.onnx")
    (repo / "sleepy_unbatched" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return root
