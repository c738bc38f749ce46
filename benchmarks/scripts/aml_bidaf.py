"""azmlinfsrv, BiDAF: the same tokenization, onnxruntime per request."""

import json
import os
import sys

import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "bidaf_onnx"))
import tokens


def init():
    global session
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "triton", "bidaf_onnx", "1", "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(data):
    context_tokens, inputs = tokens.parse(json.loads(data))
    feeds = {name: value.astype(str) for name, value in inputs.items()}
    names = ["start_pos", "end_pos"]
    return tokens.answer(context_tokens, dict(zip(names, session.run(names, feeds), strict=True)))
