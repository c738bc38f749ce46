"""DenseNet, hook style: the runtime batches infer across concurrent requests.

    runtime serve --entry examples/densenet_onnx/score_densenet.py --model-dir examples/densenet_onnx/models

POST an image (Content-Type: image/jpeg, image/png, ...) or JSON {"image": "<base64>"} to /score;
the answer is the top 5: [{"label": ..., "score": ...}].
"""

import imagenet

from runtime import InferRequest

labels: list[str] = []


def init():
    labels[:] = imagenet.read_labels()


def preprocess(request):
    image = imagenet.load_image(imagenet.image_bytes(request.mimetype, request.body))
    return InferRequest("densenet_onnx", {"data_0": imagenet.preprocess(image)})


def postprocess(request, outputs):
    return imagenet.top5(outputs["fc6_1"], labels)
