import numpy as np

from runtime import InferRequest


def preprocess(request):
    return InferRequest("double", {"x": np.asarray(request.json()["x"], dtype=np.float32)})
