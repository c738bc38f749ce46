from azureml_inference_server_http.api.aml_request import rawhttp


def init():
    pass


@rawhttp
def run(request):
    if request.method == "GET":
        return {"method": "GET", "args": request.args.to_dict(), "a": request.args.get("a", type=int)}
    body = request.get_data()
    return {
        "method": request.method,
        "length": len(body),
        "json": request.get_json(silent=True),
        "custom": request.headers.get("X-Custom"),
    }
