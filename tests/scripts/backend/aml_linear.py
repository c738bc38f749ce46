"""Azure ML style: run() calls the backend through the blocking runtime.infer API."""

import json

import numpy as np

import runtime


def init():
    # Warm up from init(): the backend is loaded before score.py's init runs.
    runtime.infer("linear", {"x": np.zeros((1, 4), dtype=np.float32)})


def run(data):
    body = json.loads(data)
    outputs = runtime.infer(body.get("model", "linear"), {"x": np.asarray([body["x"]], dtype=np.float32)})
    return {"y": outputs["y"][0].tolist()}
