"""Helpers in the style of Azure ML's Triton sample (utils.py beside score.py)."""

import numpy as np
import tritonhttpclient
from tritonclientutils import InferenceServerException, triton_to_np_dtype

_client = None


def triton_init(url="localhost:8000"):
    global _client
    _client = tritonhttpclient.InferenceServerClient(url)


def triton_infer(model_name, input_mapping, binary_data=False, binary_output=False, class_count=0):
    metadata = _client.get_model_metadata(model_name)
    inputs = []
    for meta in metadata["inputs"]:
        value = input_mapping[meta["name"]].astype(triton_to_np_dtype(meta["datatype"]))
        tensor = tritonhttpclient.InferInput(meta["name"], list(value.shape), meta["datatype"])
        tensor.set_data_from_numpy(value, binary_data=binary_data)
        inputs.append(tensor)
    outputs = [
        tritonhttpclient.InferRequestedOutput(meta["name"], binary_data=binary_output, class_count=class_count)
        for meta in metadata["outputs"]
    ]
    try:
        return _client.infer(model_name, inputs, outputs=outputs)
    except InferenceServerException as ex:
        raise RuntimeError(f"Triton failed: {ex}") from ex


def as_text(values):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]
