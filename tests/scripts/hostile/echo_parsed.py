"""@rawhttp: returns the request's JSON as Flask's get_json parsed it, to measure what deep outputs do."""

from azureml.contrib.services.aml_request import rawhttp


def init():
    pass


@rawhttp
def run(request):
    return request.get_json(force=True, silent=True)
