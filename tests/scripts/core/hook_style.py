"""Hook style: preprocess and postprocess here, infer from the test plugin (tests/scripts/core/record_plugin.py)."""

import numpy as np

from runtime import BadRequest, InferRequest, hookimpl


def init(context):
    context.state["hook_style_init"] = True


def preprocess(request):
    body = request.json()
    if "x" not in body:
        raise BadRequest("missing field 'x'")
    return InferRequest("double", {"x": np.asarray(body["x"], dtype=np.float32)})


@hookimpl
async def postprocess(request, outputs):
    return {"y": outputs["y"].tolist(), "order": request.state.get("order", [])}
