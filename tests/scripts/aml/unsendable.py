"""Answers HTTP cannot carry as given: run() picks one with the ``case`` query parameter."""

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse
from starlette.responses import Response

CASES = {
    "status_999": lambda: AMLResponse("x", 999),
    "status_0": lambda: AMLResponse("x", 0),
    "newline_in_value": lambda: AMLResponse("x", 200, {"X-A": "a\r\nX-B: injected"}),
    "empty_name": lambda: AMLResponse("x", 200, {"": "v"}),
    "space_in_name": lambda: AMLResponse("x", 200, {"X A": "v"}),
    "not_latin1": lambda: AMLResponse("x", 200, {"X-A": "\u20ac"}),
    "starlette_status_1000": lambda: Response(b"x", status_code=1000),
    "no_content_with_body": lambda: AMLResponse("body", 204),
    "not_modified_with_body": lambda: AMLResponse("body", 304),
}


def init():
    pass


@rawhttp
def run(request):
    return CASES[request.args["case"]]()
