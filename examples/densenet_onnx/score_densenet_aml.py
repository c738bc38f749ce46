"""DenseNet, unchanged Azure ML style: init() and a @rawhttp run() that calls the backend itself.

    runtime serve --entry examples/densenet_onnx/score_densenet_aml.py --model-dir examples/densenet_onnx/models

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
    image = imagenet.load_image(imagenet.image_bytes(request.mimetype, request.get_data()))
    outputs = runtime.infer("densenet_onnx", {"data_0": imagenet.preprocess(image)})
    return imagenet.top5(outputs["fc6_1"], labels)
