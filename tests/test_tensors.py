"""runtime.serving.tensors: checking (no conversion), casting once, outputs, classification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.errors import BadRequest
from runtime.serving.repository import ModelConfig, TensorSpec
from runtime.serving.tensors import cast, classify, shape_outputs, to_str_array, validate_inputs


def config(max_batch_size: int = 4, reshape: tuple[int, ...] | None = None) -> ModelConfig:
    from tritonclient.grpc import model_config_pb2 as mc

    return ModelConfig(
        name="m",
        path=Path("."),
        max_batch_size=max_batch_size,
        inputs=[TensorSpec("x", "FP32", (4,), reshape), TensorSpec("s", "BYTES", (1,))],
        outputs=[TensorSpec("y", "FP32", (2,)), TensorSpec("t", "BYTES", (1,))],
        versions=["1"],
        dynamic_batching=None,
        instance_count=1,
        model_filename="model.onnx",
        proto=mc.ModelConfig(),
    )


def check(inputs: dict[str, object], cfg: ModelConfig | None = None, exact: bool = False) -> str | None:
    try:
        validate_inputs(cfg or config(), inputs, exact)
    except BadRequest as ex:
        return ex.message
    return None


def test_valid_inputs_are_not_converted() -> None:
    x = np.zeros((2, 4), dtype=np.float64)
    s = np.array([["a"], ["b"]], dtype=object)
    inputs = {"x": x, "s": s}
    assert check(inputs) is None
    assert inputs["x"] is x and inputs["s"] is s and x.dtype == np.float64


@pytest.mark.parametrize(
    ("inputs", "exact", "message"),
    [
        (
            {"x": np.zeros((1, 4)), "s": np.array([["a"]])},
            True,
            "unexpected datatype TYPE_FP64 for inference input 'x', expecting TYPE_FP32",
        ),
        (
            {"x": np.array([["a"] * 4]), "s": np.array([["a"]])},
            False,
            "unexpected datatype TYPE_BYTES for inference input 'x', expecting TYPE_FP32",
        ),
        (
            {"x": np.zeros((1, 4), np.float32), "s": np.zeros((1, 1))},
            False,
            "unexpected datatype TYPE_FP64 for inference input 's', expecting TYPE_BYTES",
        ),
        (
            {"x": np.zeros((1, 3), np.float32), "s": np.array([["a"]])},
            False,
            "input 'x' of model 'm' has shape [1, 3], expected [-1, 4] (batch dimension first)",
        ),
        (
            {"x": np.zeros((5, 4), np.float32), "s": np.array([["a"]] * 5)},
            False,
            "input 'x' of model 'm' has batch size 5, which must be between 1 and max_batch_size 4",
        ),
        (
            {"x": np.zeros((2, 4), np.float32), "s": np.array([["a"]])},
            False,
            "inputs of model 'm' have different batch sizes (2 and 1)",
        ),
        *(
            (
                {"x": np.zeros((len(strings), 4), np.float32), "s": strings},
                False,
                "input 's' holds a string that is not valid Unicode (a lone surrogate such as \\ud800, which has "
                "no UTF-8 form)",
            )
            for strings in (
                np.array([["ok\ud800"]]),  # numpy unicode
                np.array([["x\udfff"]], dtype=object),  # str objects
                np.array([[b"\xff"], ["\ud800"]], dtype=object),  # bytes beside them (bytes pass as they are)
            )
        ),
        (
            {"x": np.zeros((1, 4), np.float32)},
            False,
            "expected 2 inputs but got 1 inputs for model 'm': input 's' is missing",
        ),
        (
            {"x": np.zeros((1, 4), np.float32), "s": np.array([["a"]]), "z": 1},
            False,
            "unexpected inference input 'z' for model 'm'; it takes: x, s",
        ),
    ],
)
def test_one_message_per_problem(inputs: dict[str, object], exact: bool, message: str) -> None:
    assert check(inputs, exact=exact) == message


def test_reshape_is_checked_and_applied_only_by_cast() -> None:
    cfg = config(reshape=(2, 2))
    x = np.arange(4, dtype=np.int32).reshape(1, 4)
    assert check({"x": x, "s": np.array([["a"]])}, cfg) is None
    assert x.shape == (1, 4)
    spec = cfg.inputs[0]
    cast_x = cast(cfg, spec, x, reshape=True)
    assert cast_x.dtype == np.float32 and cast_x.shape == (1, 2, 2)
    assert cast(cfg, spec, x, reshape=False).shape == (1, 4)
    bad = config(reshape=(3, 2))
    assert check({"x": x, "s": np.array([["a"]])}, bad) == (
        "input 'x' of model 'm' with shape [1, 4] cannot be reshaped to [1, 3, 2]"
    )


def test_cast_keeps_an_array_of_the_right_type() -> None:
    cfg = config()
    x = np.zeros((1, 4), dtype=np.float32)
    assert cast(cfg, cfg.inputs[0], x, reshape=True) is x


def test_strings_become_str_arrays_in_one_step() -> None:
    as_objects = np.array(["h\u00e9", "b"], dtype=object)
    assert to_str_array(as_objects).tolist() == ["h\u00e9", "b"]
    assert to_str_array(as_objects) is as_objects  # onnxruntime reads str objects itself: no copy
    assert to_str_array(np.array([b"h\xc3\xa9", b"b"], dtype=object)).tolist() == ["h\u00e9", "b"]
    unicode = np.array(["x"])
    assert to_str_array(unicode) is unicode


def test_shape_outputs_selects_names_and_makes_bytes() -> None:
    cfg = config()
    out = shape_outputs(cfg, {"y": np.zeros((1, 2)), "t": np.array([["a"]], dtype=object)}, ["t"])
    assert list(out) == ["t"] and out["t"].tolist() == [[b"a"]]


def test_classification_top_k_with_labels() -> None:
    values = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    out = classify(values, 2, ("a", "b", "c"), batched=True)
    assert out.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"]]
    assert classify(values[0], 5, None, batched=False).shape == (3,)
