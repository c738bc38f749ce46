import json


def init():
    global factor
    factor = 2


def run(data):
    payload = json.loads(data)
    return {"input": payload, "type": type(data).__name__, "factor": factor}
