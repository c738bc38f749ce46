"""Hook style, any model: {"model", "inputs": {name: nested list}, "dtypes": {name: numpy dtype}} in,
every output as a list (BYTES decoded) plus the worker's pid out."""

import os

import numpy as np

from runtime import InferRequest


def preprocess(request):
    body = request.json()
    inputs = {n: np.asarray(v, dtype=body["dtypes"][n]) for n, v in body["inputs"].items()}
    return InferRequest(body["model"], inputs)


def postprocess(request, outputs):
    lists = {n: (np.vectorize(bytes.decode)(v) if v.dtype == object else v).tolist() for n, v in outputs.items()}
    return {"pid": os.getpid(), "outputs": lists}
