"""azmlinfsrv, DenseNet with the tensor as JSON (what a plain web service takes): onnxruntime per request."""

import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "densenet_onnx"))
import imagenet


def init():
    global session, labels
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "triton", "densenet_onnx", "1", "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    labels = imagenet.read_labels()


def run(data):
    x = np.asarray(json.loads(data)["data_0"], dtype=np.float32)
    return imagenet.top5(session.run(["fc6_1"], {"data_0": x})[0], labels)
