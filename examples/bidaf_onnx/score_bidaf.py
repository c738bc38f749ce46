"""BiDAF, hook style: preprocess tokenizes, the backend runs the model, postprocess picks the answer span.

    runtime serve --entry examples/bidaf_onnx/score_bidaf.py --model-dir examples/bidaf_onnx/models

POST {"context": "...", "query": "..."} to /score; the answer is {"answer": "..."}.
"""

import tokens

from runtime import InferRequest


def preprocess(request):
    context_tokens, inputs = tokens.parse(request.json())
    request.state["context_tokens"] = context_tokens
    return InferRequest("bidaf_onnx", inputs)


def postprocess(request, outputs):
    return tokens.answer(request.state["context_tokens"], outputs)
