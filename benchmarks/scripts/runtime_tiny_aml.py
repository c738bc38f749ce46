"""The same service on the runtime, Azure ML style: run() calls runtime.infer (batched)."""

import json

import numpy as np

import runtime


def init():
    pass


def run(data):
    x = np.asarray(json.loads(data)["x"], dtype=np.float32)
    return {"y": runtime.infer("tiny", {"x": x})["y"].tolist()}
