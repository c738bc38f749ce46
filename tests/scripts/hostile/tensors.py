"""Hook style, every step the runtime's own: the built-in JSON-to-tensors, the backend, the built-in postprocess.

POST {"input name": [[...]], ...} to /score?model=NAME (default linear); the answer is every output.
"""

from runtime_plugins.azureml import tensors_from_json

from runtime import InferRequest


def preprocess(request):
    return InferRequest(request.query.get("model", "linear"), tensors_from_json(request.json()))
