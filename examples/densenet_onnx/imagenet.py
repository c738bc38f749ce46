"""ImageNet pre- and post-processing for DenseNet, as the ONNX model zoo documents it.

Shared by both entry scripts and client.py. Bad images raise
:class:`runtime.BadRequest`, which the server answers with a 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime import BadRequest

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HERE = Path(__file__).resolve().parent
USAGE = 'send an image (Content-Type: image/jpeg, image/png, ...), JSON {"image": "<base64>"} or a multipart upload'


def image_bytes(mimetype: str, body: bytes) -> bytes:
    """The image in a request body: raw bytes with an image type, or base64 in JSON."""
    if mimetype == "application/json":
        try:
            payload: Any = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            raise BadRequest(f"the request body is not valid JSON: {ex}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise BadRequest(f'missing field "image": {USAGE}')
        try:
            return base64.b64decode(payload["image"], validate=True)
        except (binascii.Error, ValueError) as ex:
            raise BadRequest(f'field "image" is not valid base64: {ex}') from None
    if not body:
        raise BadRequest(f"the request body is empty: {USAGE}")
    return body


def load_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise BadRequest(f"the request body is not an image Pillow can read: {USAGE}") from None
    except (OSError, SyntaxError, ValueError) as ex:
        raise BadRequest(f"the image is truncated or corrupt: {ex}") from None
    return image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """Resize the shorter side to 256, center-crop 224, scale to [0, 1], normalise; NCHW float32 [1,3,224,224]."""
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((max(224, round(width * scale)), max(224, round(height * scale))), Image.BILINEAR)
    width, height = image.size
    left, top = (width - 224) // 2, (height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(array.transpose(2, 0, 1)[np.newaxis])


def top5(logits: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Softmax over the 1000 classes; the five most likely, with their labels."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    probabilities = np.exp(values - values.max())
    probabilities /= probabilities.sum()
    best = np.argsort(-probabilities, kind="stable")[:5]
    return [{"label": labels[i], "score": round(float(probabilities[i]), 6)} for i in best]


def read_labels() -> list[str]:
    """densenet_labels.txt from the model repository (AZUREML_MODEL_DIR), else the copy beside this file."""
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    candidates = [Path(model_dir) / "triton" / "densenet_onnx" / "densenet_labels.txt"] if model_dir else []
    candidates.append(HERE / "densenet_labels.txt")
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8").splitlines()
    raise FileNotFoundError("densenet_labels.txt not found")
