"""@rawhttp that saves an upload and answers with what it got (runtime-only checks)."""

import os
import tempfile

from azureml_inference_server_http.api.aml_request import rawhttp


def init():
    pass


@rawhttp
def run(request):
    upload = request.files["image"]
    with tempfile.TemporaryDirectory() as folder:  # a user's script would keep it; a test leaves nothing behind
        path = os.path.join(folder, "saved.bin")
        upload.save(path)
        with open(path, "rb") as saved:
            size = len(saved.read())
    return {
        "saved": size,
        "filename": upload.filename,
        "mimetype": upload.mimetype,
        "bool": bool(upload),
        "label": request.form.get("label", "none"),
        "threshold": request.form.get("threshold", 0.5, type=float),
        "data": len(request.data),
    }
