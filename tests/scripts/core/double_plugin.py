"""A test backend: infer for a model named 'double', nothing else."""

import asyncio

from runtime import hookimpl


@hookimpl
def infer(model, inputs, parameters):
    if model != "double":
        return None

    async def compute():
        return {"y": inputs["x"] * 2}

    return asyncio.ensure_future(compute())
