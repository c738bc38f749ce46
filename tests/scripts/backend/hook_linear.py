"""Hook style: preprocess builds one request's tensor, the runtime batches infer, postprocess shapes the answer."""

import numpy as np

from runtime import BadRequest, InferRequest


def preprocess(request):
    body = request.json()
    if "x" not in body:
        raise BadRequest("missing field 'x'")
    return InferRequest(body.get("model", "linear"), {"x": np.asarray([body["x"]], dtype=np.float32)})


def postprocess(request, outputs):
    return {"y": outputs["y"][0].tolist()}
