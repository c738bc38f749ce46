"""Build a model with BiDAF's signature (ONNX model zoo bidaf-9) and its Triton config, under models/ here.

    python examples/bidaf_onnx/make_model.py

Inputs, as in the zoo: context_word [c,1], context_char [c,1,1,16], query_word [q,1],
query_char [q,1,1,16], all string tensors; outputs start_pos and end_pos, int32 [1].
Strings become indices inside the graph (ai.onnx.ml LabelEncoder), so the string
tensor path is exercised for real. The weights are deterministic pseudo-random
numbers: the answers are MEANINGLESS (a span of the context, not an answer).

To use the real model, put the zoo's bidaf-9.onnx at models/triton/bidaf_onnx/1/model.onnx
and run this script: it keeps a model in place and writes only the config.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
MODEL_NAME = "bidaf_onnx"
DIM = 16
WORDS = [
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "was",
    "it",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "he",
    "his",
    "an",
    "be",
    "this",
    "are",
    "which",
    "or",
    "first",
    "one",
    "their",
    "has",
    "were",
    "its",
    "also",
    "city",
    "new",
    "after",
    "who",
    "year",
    "during",
    "her",
    "had",
    "she",
    "they",
    "been",
    "time",
    "world",
]
CHARS = list(string.ascii_letters + string.digits + string.punctuation)


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(9)
    word_table = rng.standard_normal((len(WORDS) + 1, DIM)).astype(np.float32)
    char_table = (rng.standard_normal((len(CHARS) + 1, DIM)) / 8).astype(np.float32)
    end_weights = rng.standard_normal((DIM, 1)).astype(np.float32)
    nodes = []

    def encode(prefix: str) -> str:
        """words [n,1] + chars [n,1,1,16] -> one vector per token [n, DIM]."""
        nodes.extend(
            [
                helper.make_node(
                    "LabelEncoder",
                    [f"{prefix}_word"],
                    [f"{prefix}_wid"],
                    domain="ai.onnx.ml",
                    keys_strings=WORDS,
                    values_int64s=list(range(1, len(WORDS) + 1)),
                    default_int64=0,
                ),
                helper.make_node("Gather", ["word_table", f"{prefix}_wid"], [f"{prefix}_wemb"]),
                helper.make_node("ReduceSum", [f"{prefix}_wemb", "axis1"], [f"{prefix}_wvec"], keepdims=0),
                helper.make_node(
                    "LabelEncoder",
                    [f"{prefix}_char"],
                    [f"{prefix}_cid"],
                    domain="ai.onnx.ml",
                    keys_strings=CHARS,
                    values_int64s=list(range(1, len(CHARS) + 1)),
                    default_int64=0,
                ),
                helper.make_node("Gather", ["char_table", f"{prefix}_cid"], [f"{prefix}_cemb"]),
                helper.make_node("ReduceSum", [f"{prefix}_cemb", "axes123"], [f"{prefix}_cvec"], keepdims=0),
                helper.make_node("Add", [f"{prefix}_wvec", f"{prefix}_cvec"], [f"{prefix}_vec"]),
            ]
        )
        return f"{prefix}_vec"

    context, query = encode("context"), encode("query")
    nodes.extend(
        [
            helper.make_node("ReduceMean", [query], ["query_mean"], axes=[0], keepdims=1),
            helper.make_node("Transpose", ["query_mean"], ["query_t"], perm=[1, 0]),
            helper.make_node("MatMul", [context, "query_t"], ["start_scores"]),
            helper.make_node("ArgMax", ["start_scores"], ["start_i64"], axis=0, keepdims=0),
            helper.make_node("MatMul", [context, "end_weights"], ["end_scores"]),
            helper.make_node("ArgMax", ["end_scores"], ["end_raw"], axis=0, keepdims=0),
            helper.make_node("Max", ["start_i64", "end_raw"], ["end_i64"]),
            helper.make_node("Cast", ["start_i64"], ["start_pos"], to=TensorProto.INT32),
            helper.make_node("Cast", ["end_i64"], ["end_pos"], to=TensorProto.INT32),
        ]
    )
    strings = [
        helper.make_tensor_value_info("context_word", TensorProto.STRING, ["c", 1]),
        helper.make_tensor_value_info("context_char", TensorProto.STRING, ["c", 1, 1, 16]),
        helper.make_tensor_value_info("query_word", TensorProto.STRING, ["q", 1]),
        helper.make_tensor_value_info("query_char", TensorProto.STRING, ["q", 1, 1, 16]),
    ]
    graph = helper.make_graph(
        nodes,
        "bidaf_signature",
        strings,
        [
            helper.make_tensor_value_info("start_pos", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("end_pos", TensorProto.INT32, [1]),
        ],
        initializer=[
            numpy_helper.from_array(word_table, "word_table"),
            numpy_helper.from_array(char_table, "char_table"),
            numpy_helper.from_array(end_weights, "end_weights"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes123"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)],
        producer_name="runtime-examples",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


CONFIG = f'''name: "{MODEL_NAME}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{ name: "context_word" data_type: TYPE_STRING dims: [-1, 1] }},
  {{ name: "context_char" data_type: TYPE_STRING dims: [-1, 1, 1, 16] }},
  {{ name: "query_word" data_type: TYPE_STRING dims: [-1, 1] }},
  {{ name: "query_char" data_type: TYPE_STRING dims: [-1, 1, 1, 16] }}
]
output [
  {{ name: "start_pos" data_type: TYPE_INT32 dims: [1] }},
  {{ name: "end_pos" data_type: TYPE_INT32 dims: [1] }}
]
instance_group [{{ count: 2 kind: KIND_CPU }}]
'''


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "models", help="model directory (default: models/ here)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a model.onnx is in place")
    args = parser.parse_args(argv)
    folder = args.out / "triton" / MODEL_NAME
    path = folder / "1" / "model.onnx"
    if args.force or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(build(), str(path))
        print(f"built a model with BiDAF's signature (meaningless weights) at {path}")
    else:
        print(f"keeping the model in place at {path}")
    (folder / "config.pbtxt").write_text(CONFIG)
    print(f"wrote {folder / 'config.pbtxt'}")
    return path


if __name__ == "__main__":
    main()
