"""@rawhttp run() returning AMLResponse(generator): chunks, optionally slow, SSE, or failing halfway."""

import json
import os
import time

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    pass


def chunks(count, delay, marker):
    try:
        for i in range(count):
            if i and delay:
                time.sleep(delay)
            yield f"chunk {i};"
    finally:
        if marker:
            with open(marker, "a") as out:
                out.write("closed\n")


def events(count):
    for i in range(count):
        yield f"data: {json.dumps({'token': i})}\n\n"


def failing():
    yield "first;"
    raise RuntimeError("the model fell over")


def slow_first(delay):
    time.sleep(delay)
    yield "late"


def failing_first():
    raise RuntimeError("no first chunk")
    yield "never"


async def async_tokens(count):
    import asyncio

    for i in range(count):
        await asyncio.sleep(0)
        yield f"token {i};".encode()


async def async_endless(marker):
    import asyncio

    try:
        i = 0
        while True:
            await asyncio.sleep(0.02)
            yield f"token {i};"
            i += 1
    finally:
        await asyncio.sleep(0.01)  # an async clean-up, as closing an upstream connection
        with open(marker, "a") as out:
            out.write("closed async\n")


async def one_task(count):
    import asyncio

    task = asyncio.current_task()  # asyncio.timeout() and context variables across a yield need the same task
    for i in range(count):
        await asyncio.sleep(0)
        yield f"{i} {asyncio.current_task() is task};"


@rawhttp
def run(request):
    kind = request.args.get("kind", "plain")
    if kind == "sse":
        return AMLResponse(events(3), 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    if kind == "fail":
        return AMLResponse(failing(), 200)
    if kind == "slow_first":
        return AMLResponse(slow_first(float(request.args.get("delay", "3"))), 200)
    if kind == "fail_first":
        return AMLResponse(failing_first(), 200)
    if kind == "async_endless":
        return AMLResponse(async_endless(os.environ["STREAM_MARKER"]), 200)
    if kind == "one_task":
        return AMLResponse(one_task(3), 200)
    if kind == "async":
        return AMLResponse(async_tokens(3), 200, {"Content-Type": "text/plain"})
    count = int(request.args.get("count", "3"))
    delay = float(request.args.get("delay", "0"))
    marker = os.environ.get("STREAM_MARKER") if request.args.get("marker") else None
    return AMLResponse(chunks(count, delay, marker), 201, {"X-Stream": "yes"})
