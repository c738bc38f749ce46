"""azmlinfsrv, the DenseNet example end to end (JPEG in, top 5 out): the same preprocessing, onnxruntime per request."""

import os
import sys

import onnxruntime as ort
from azureml.contrib.services.aml_request import rawhttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "densenet_onnx"))
import imagenet


def init():
    global session, labels
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "triton", "densenet_onnx", "1", "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    labels = imagenet.read_labels()


@rawhttp
def run(request):
    x = imagenet.preprocess(imagenet.load_image(request.get_data()))
    return imagenet.top5(session.run(["fc6_1"], {"data_0": x})[0], labels)
