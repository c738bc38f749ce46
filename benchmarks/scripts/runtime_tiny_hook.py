"""The same service on the runtime, hook style; its hooks take microseconds, so they run inline."""

import numpy as np

from runtime import InferRequest, inline


@inline
def preprocess(request):
    return InferRequest("tiny", {"x": np.asarray(request.json()["x"], dtype=np.float32)})


@inline
def postprocess(request, outputs):
    return {"y": outputs["y"].tolist()}
