"""An async run() that blocks the event loop with time.sleep when asked to."""

import json
import os
import time


def init():
    pass


async def run(data):
    payload = json.loads(data) if data else {}
    time.sleep(payload.get("block", 0))
    return {"pid": os.getpid()}
