"""@rawhttp with form bodies; ?order=files_first|data_first says whether get_data() comes after or before the files."""

from azureml_inference_server_http.api.aml_request import rawhttp


def init():
    pass


def describe_files(request):
    return {
        name: {
            "filename": f.filename,
            "content_type": f.content_type,
            "data": f.read().decode("utf-8", "replace"),
        }
        for name, f in request.files.items()
    }


@rawhttp
def run(request):
    order = request.args.get("order", "files_first")
    if order == "data_first":
        length = len(request.get_data())
        files = describe_files(request)
    else:
        files = describe_files(request)
        length = len(request.get_data())
    return {
        "form": request.form.to_dict(flat=False),
        "files": files,
        "data_length": length,
        "values": sorted(request.values.keys()),
    }
