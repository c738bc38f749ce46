"""Azure ML style script used by the core tests: echoes, sleeps, reports its process and concurrency."""

import json
import os
import sys
import threading
import time

lock = threading.Lock()
in_flight = 0
max_in_flight = 0


def init():
    global started
    started = True


def run(data):
    global in_flight, max_in_flight
    payload = json.loads(data) if data else {}
    if payload.get("fail"):
        raise RuntimeError("secret internal detail that must not leak")
    if payload.get("exit"):
        sys.exit(payload["exit"])
    if "parse" in payload:  # JSON of the script's own that is broken (not the body)
        json.loads(payload["parse"])
    with lock:
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
    try:
        time.sleep(payload.get("sleep", 0))
    finally:
        with lock:
            in_flight -= 1
    return {
        "echo": payload,
        "pid": os.getpid(),
        "max_in_flight": max_in_flight,
        "model_dir": os.environ.get("AZUREML_MODEL_DIR"),
    }
