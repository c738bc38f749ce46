"""Fault tests: run() records each call, sleeps on request, can leak memory, and reports its process."""

import json
import os
import time

CALLS = os.environ.get("FAULT_CALLS")  # a file: every run() call appends the request's "id"
LEAKED: list[bytearray] = []


def init():
    pass


def run(data):
    payload = json.loads(data) if data else {}
    if CALLS:
        with open(CALLS, "a") as calls:
            calls.write(f"{payload.get('id', '')}\n")
    time.sleep(payload.get("sleep", 0))
    if payload.get("leak_mb"):
        LEAKED.append(bytearray(b"x" * (payload["leak_mb"] * 1024 * 1024)))
    return {"pid": os.getpid()}
