"""An Azure ML Triton sample-style entry script: run() talks to Triton itself through tritonhttpclient."""

import json

import numpy as np
from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse
from seed_utils import as_text, triton_infer, triton_init


def init():
    triton_init()


@rawhttp
def run(request):
    if request.method != "POST":
        return AMLResponse("bad request, use POST", 500)
    logits = np.asarray(json.loads(request.get_data(False)), dtype=np.float32).reshape(1, -1)
    result = triton_infer("classifier", {"x": logits}, binary_data=True, binary_output=True, class_count=2)
    return AMLResponse(
        json.dumps({"top": as_text(result.as_numpy("probs"))}), 200, {"Content-Type": "application/json"}
    )
