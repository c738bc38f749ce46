"""The same service on the runtime, hook style."""

import numpy as np

from runtime import InferRequest


def preprocess(request):
    return InferRequest("tiny", {"x": np.asarray(request.json()["x"], dtype=np.float32)})


def postprocess(request, outputs):
    return {"y": outputs["y"].tolist()}
