import asyncio
import json


def init():
    pass


async def run(data):
    payload = json.loads(data) if data else {}
    await asyncio.sleep(payload.get("sleep", 0))
    return {"async": True, "echo": payload}
