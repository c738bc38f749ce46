"""Send an image to a running server, at /score (plain HTTP) or /v2 (tritonclient).

    python examples/densenet_onnx/client.py IMAGE [--url http://127.0.0.1:5001] [--v2]

Without IMAGE, a synthetic test picture is sent.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagenet

# runtime serve's port: SERVER_PORT, else 5001.
DEFAULT_URL = f"http://127.0.0.1:{os.environ.get('SERVER_PORT', '5001')}"
NO_ENTRY = "; a server started with --model-dir only has no /score: serve score_densenet.py (--entry) or use --v2"
NO_MODEL = "; score.py was served without its model: add --model-dir examples/densenet_onnx/models to runtime serve"


def synthetic_jpeg() -> bytes:
    x, y = np.meshgrid(np.linspace(0, 255, 320), np.linspace(0, 255, 240))
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def via_score(url: str, data: bytes) -> object:
    request = urllib.request.Request(f"{url}/score", data=data, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def via_v2(url: str, data: bytes) -> object:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url.split("://", 1)[-1])
    tensor = imagenet.preprocess(imagenet.load_image(data))
    inputs = triton.InferInput("data_0", list(tensor.shape), "FP32")
    inputs.set_data_from_numpy(tensor, binary_data=True)
    output = triton.InferRequestedOutput("fc6_1", binary_data=True, class_count=5)
    result = client.infer("densenet_onnx", [inputs], outputs=[output])
    return [v.decode() for v in result.as_numpy("fc6_1").ravel()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default: {DEFAULT_URL})")
    parser.add_argument("--v2", action="store_true", help="tritonclient to /v2/models/densenet_onnx/infer")
    args = parser.parse_args()
    data = args.image.read_bytes() if args.image else synthetic_jpeg()
    try:
        print(json.dumps(via_v2(args.url, data) if args.v2 else via_score(args.url, data), indent=2))
    except urllib.error.HTTPError as ex:
        body = ex.read().decode(errors="replace")
        hint = (NO_MODEL if "No backend serves a model" in body else NO_ENTRY) if ex.code == 404 else ""
        sys.exit(f"{ex.url}: HTTP {ex.code} {body}{hint}")
    except (urllib.error.URLError, ConnectionError) as ex:
        sys.exit(f"cannot reach {args.url}: {ex} (is runtime serve running?)")


if __name__ == "__main__":
    main()
