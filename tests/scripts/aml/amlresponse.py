import json

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    if request.method == "GET":
        return AMLResponse("plain text", 201, {"X-Extra": "a, b"})
    data = request.get_data()
    try:
        value = json.loads(data)
    except ValueError:
        return AMLResponse({"error": "bad json"}, 422, json_str=True)
    return AMLResponse(json.dumps({"echo": value}), 200, {"Content-Type": "application/json"})
