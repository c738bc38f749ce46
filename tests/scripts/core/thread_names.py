"""Reports which thread each hook ran on: @inline hooks on the event loop, the others in the pool."""

import threading

from runtime import InferRequest, inline


@inline
def preprocess(request):
    request.state["preprocess_thread"] = threading.current_thread().name
    return InferRequest("double", {"x": __import__("numpy").asarray(request.json()["x"], dtype="float32")})


def postprocess(request, outputs):
    return {"preprocess": request.state["preprocess_thread"], "postprocess": threading.current_thread().name}
