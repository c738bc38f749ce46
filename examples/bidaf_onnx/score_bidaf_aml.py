"""BiDAF, unchanged Azure ML style: init() and run(data), with run() calling the backend.

runtime serve --entry examples/bidaf_onnx/score_bidaf_aml.py --model-dir examples/bidaf_onnx/models
"""

import json

import tokens

import runtime
from runtime import BadRequest


def init():
    pass


def run(data):
    try:
        body = json.loads(data)
    except json.JSONDecodeError as ex:
        raise BadRequest(f"the request body is not valid JSON: {ex}") from None
    context_tokens, inputs = tokens.parse(body)
    return tokens.answer(context_tokens, runtime.infer("bidaf_onnx", inputs))
