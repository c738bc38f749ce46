"""Build a DenseNet-121 with the ONNX model zoo's signature, and its Triton config, under models/ beside this file.

    python examples/densenet_onnx/make_model.py            # DenseNet-121, dynamic batch
    python examples/densenet_onnx/make_model.py --small    # same signature, a few layers (tests)
    python examples/densenet_onnx/make_model.py --format torchscript   # model.pt, under models_torchscript/

The TorchScript model (``pip install 'scoring-runtime[torch]'``) is the same
DenseNet-121 built in plain PyTorch with the ONNX file's weights: both formats
give the same answers. Its model is named ``densenet_onnx`` too, so the same
score.py serves either repository.

The weights are deterministic pseudo-random numbers: the answers are
MEANINGLESS. The model only has the real one's input ``data_0`` FP32
[N,3,224,224], output ``fc6_1`` FP32 [N,1000,1,1] and its cost.

To use the real model, put the ONNX model zoo's densenet-12.onnx (or -9) at
models/triton/densenet_onnx/1/model.onnx and run this script: it keeps a
model that is already in place and writes the config to match it (the zoo
file's batch is fixed at 1, so max_batch_size 0).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
MODEL_NAME = "densenet_onnx"


class Builder:
    def __init__(self, seed: int = 121) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, bias: bool = False) -> str:
        w = self.name("w")
        std = np.sqrt(2.0 / (cin * k * k))
        self.weights.append(
            numpy_helper.from_array((self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32), w)
        )
        inputs = [x, w]
        if bias:
            b = self.name("b")
            self.weights.append(numpy_helper.from_array(np.zeros(cout, dtype=np.float32), b))
            inputs.append(b)
        out = self.name("conv")
        self.nodes.append(
            helper.make_node("Conv", inputs, [out], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        )
        return out

    def bn_relu(self, x: str, channels: int) -> str:
        names = [self.name(p) for p in ("scale", "shift", "mean", "var")]
        values = [np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels)]
        for n, v in zip(names, values, strict=True):
            self.weights.append(numpy_helper.from_array(v.astype(np.float32), n))
        bn, relu = self.name("bn"), self.name("relu")
        self.nodes.append(helper.make_node("BatchNormalization", [x, *names], [bn], epsilon=1e-5))
        self.nodes.append(helper.make_node("Relu", [bn], [relu]))
        return relu

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def build(blocks: tuple[int, ...], growth: int, features: int, batch: int | str) -> onnx.ModelProto:
    b = Builder()
    x = b.conv("data_0", 3, features, 7, stride=2, pad=3)
    x = b.bn_relu(x, features)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = features
    for i, layers in enumerate(blocks):
        for _ in range(layers):
            y = b.conv(b.bn_relu(x, channels), channels, 4 * growth, 1)
            y = b.conv(b.bn_relu(y, 4 * growth), 4 * growth, growth, 3, pad=1)
            x = b.op("Concat", [x, y], axis=1)
            channels += growth
        if i < len(blocks) - 1:
            x = b.conv(b.bn_relu(x, channels), channels, channels // 2, 1)
            x = b.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
            channels //= 2
    x = b.op("GlobalAveragePool", [b.bn_relu(x, channels)])
    logits = b.conv(x, channels, 1000, 1, bias=True)
    b.nodes.append(helper.make_node("Identity", [logits], ["fc6_1"]))
    graph = helper.make_graph(
        b.nodes,
        "densenet121",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [batch, 1000, 1, 1])],
        initializer=b.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="runtime-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def batch_is_dynamic(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    return not first.HasField("dim_value")


def write_config(folder: Path, dynamic: bool, max_batch_size: int) -> None:
    if dynamic:
        shapes = "dims: [3, 224, 224]", "dims: [1000, 1, 1]"
        batching = f"max_batch_size: {max_batch_size}\ndynamic_batching {{ }}\n"
    else:  # the model zoo file: batch fixed at 1
        shapes = "dims: [1, 3, 224, 224]", "dims: [1, 1000, 1, 1]"
        batching = "max_batch_size: 0\n"
    (folder / "config.pbtxt").write_text(
        f'name: "{MODEL_NAME}"\nplatform: "onnxruntime_onnx"\n{batching}'
        f'input [{{ name: "data_0" data_type: TYPE_FP32 {shapes[0]} }}]\n'
        f'output [{{ name: "fc6_1" data_type: TYPE_FP32 {shapes[1]} label_filename: "densenet_labels.txt" }}]\n'
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
    )
    shutil.copy2(HERE / "densenet_labels.txt", folder / "densenet_labels.txt")


def conv_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The convolution weights, in the order :class:`Builder` made them."""
    return [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("w_")]


def save_torchscript(model: onnx.ModelProto, blocks: tuple[int, ...], growth: int, features: int, path: Path) -> None:
    if str(HERE) not in sys.path:  # also when loaded by path (tests, benchmarks)
        sys.path.insert(0, str(HERE))
    import densenet_torch  # beside this file; needs torch, which only this format does
    import torch

    module = densenet_torch.from_onnx(densenet_torch.DenseNet(blocks, growth, features), conv_weights(model))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))


def write_torchscript_config(folder: Path, max_batch_size: int) -> None:
    # Triton cannot complete a TorchScript config from model.pt: every field is spelled out.
    # data_0 is forward()'s argument name; the only output is the returned tensor.
    # DISABLE_OPTIMIZED_EXECUTION (Triton's parameter): with the profiling executor's optimisations, the
    # first two calls at every new batch size took 1.5-2.4 s instead of 0.25 s here, and later calls were
    # slower too (2 cores, batch 1 and 2); benchmarks/gpu_check.py measures both settings on a GPU.
    (folder / "config.pbtxt").write_text(
        f'name: "{MODEL_NAME}"\nplatform: "pytorch_libtorch"\nmax_batch_size: {max_batch_size}\n'
        "dynamic_batching { }\n"
        'parameters: { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } }\n'
        'input [{ name: "data_0" data_type: TYPE_FP32 dims: [3, 224, 224] }]\n'
        'output [{ name: "fc6_1" data_type: TYPE_FP32 dims: [1000, 1, 1] label_filename: "densenet_labels.txt" }]\n'
        "instance_group [{ count: 1 kind: KIND_AUTO }]\n"
    )
    shutil.copy2(HERE / "densenet_labels.txt", folder / "densenet_labels.txt")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, help="model directory (default: models/ here, models_torchscript/ for torchscript)"
    )
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--small", action="store_true", help="a few layers only (fast; same signature)")
    parser.add_argument("--fixed-batch", action="store_true", help="batch fixed at 1, like the model zoo file")
    # On CPU, throughput is flat from batch 4 up while memory grows with the batch: 16 is plenty.
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--force", action="store_true", help="rebuild even if a model.onnx is in place")
    args = parser.parse_args(argv)
    blocks, growth, features = ((1, 1, 1, 1), 8, 16) if args.small else ((6, 12, 24, 16), 32, 64)
    if args.format == "torchscript":
        folder = (args.out or HERE / "models_torchscript") / "triton" / MODEL_NAME
        path = folder / "1" / "model.pt"
        if args.force or not path.exists():
            save_torchscript(build(blocks, growth, features, "N"), blocks, growth, features, path)
            print(f"built {'small ' if args.small else ''}DenseNet in TorchScript (meaningless weights) at {path}")
        else:
            print(f"keeping the model in place at {path}")
        write_torchscript_config(folder, args.max_batch_size)
        print(f"wrote {folder / 'config.pbtxt'} (max_batch_size {args.max_batch_size})")
        return path
    folder = (args.out or HERE / "models") / "triton" / MODEL_NAME
    path = folder / "1" / "model.onnx"
    if args.force or not path.exists():
        model = build(blocks, growth, features, 1 if args.fixed_batch else "N")
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        print(f"built {'small ' if args.small else ''}DenseNet (meaningless weights) at {path}")
    else:
        print(f"keeping the model in place at {path}")
    dynamic = batch_is_dynamic(path)
    write_config(folder, dynamic, args.max_batch_size)
    print(f"wrote {folder / 'config.pbtxt'} (max_batch_size {args.max_batch_size if dynamic else 0})")
    return path


if __name__ == "__main__":
    main()
