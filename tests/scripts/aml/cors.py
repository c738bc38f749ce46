"""Azure ML's @rawhttp sample ("Advanced entry script authoring"): headers set on the AMLResponse after it is built."""

from azureml.contrib.services.aml_request import AMLRequest, rawhttp  # noqa: F401
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    if request.method == "GET":
        respBody = str.encode(request.full_path)
        return AMLResponse(respBody, 200)
    reqBody = request.get_data(False)
    resp = AMLResponse(reqBody, 200, {"X-Tag": "from-init"})
    resp.headers["Access-Control-Allow-Origin"] = "http://www.example.com"
    if request.args.get("more"):
        resp.headers["Content-Type"] = "application/octet-stream"  # replaces the default
        resp.headers.add("X-Tag", "added")
        resp.headers["X-Gone"] = "x"
        del resp.headers["x-gone"]
        assert resp.headers["access-control-allow-origin"] == "http://www.example.com"
        assert resp.headers.get("X-Missing", "default") == "default" and "X-Tag" in resp.headers
    return resp
