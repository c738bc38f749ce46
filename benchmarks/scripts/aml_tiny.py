"""The plain web service (azmlinfsrv): onnxruntime called per request, the tensor as JSON."""

import json
import os

import numpy as np
import onnxruntime as ort


def init():
    global session
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "triton", "tiny", "1", "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(data):
    x = np.asarray(json.loads(data)["x"], dtype=np.float32)
    return {"y": session.run(["y"], {"x": x})[0].tolist()}
