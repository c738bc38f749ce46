"""A test plugin: records the hook order, implements infer for a model named 'double'."""

import asyncio

from runtime import hookimpl


@hookimpl(tryfirst=True)
def preprocess(request):
    request.state.setdefault("order", []).append("plugin.preprocess")
    return None  # not a result: the next implementation runs


@hookimpl
def infer(model, inputs, parameters):
    if model != "double":
        return None

    async def compute():
        return {"y": inputs["x"] * 2}

    return asyncio.ensure_future(compute())


@hookimpl(trylast=True)
def postprocess(request, outputs):
    return {"from": "plugin", "y": outputs["y"].tolist()}
