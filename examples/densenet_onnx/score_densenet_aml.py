"""DenseNet, unchanged Azure ML style: init() and a @rawhttp run() that calls the backend itself.

    runtime serve --entry examples/densenet_onnx/score_densenet_aml.py --model-dir examples/densenet_onnx/models

It takes the image as the body (Content-Type: image/jpeg, ...), as JSON {"image": "<base64>"}, or as a
multipart/form-data upload (curl -F image=@cat.jpg http://127.0.0.1:5001/score).

runtime.infer() blocks, is thread-safe, and concurrent calls join the same batches.
"""

import imagenet
from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse

import runtime


def init():
    global labels
    labels = imagenet.read_labels()


@rawhttp
def run(request):
    if request.method != "POST":
        return AMLResponse({"message": "POST an image to /score"}, 405, json_str=True)
    if request.files:
        # multipart/form-data, as `curl -F image=@cat.jpg .../score` sends it: the "image" part, else the first.
        upload = request.files.get("image") or next(iter(request.files.values()))
        data = imagenet.image_bytes(upload.mimetype, upload.read())
    else:
        data = imagenet.image_bytes(request.mimetype, request.get_data())
    image = imagenet.load_image(data)
    outputs = runtime.infer("densenet_onnx", {"data_0": imagenet.preprocess(image)})
    return imagenet.top5(outputs["fc6_1"], labels)
