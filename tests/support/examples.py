"""The reference examples (examples/densenet_onnx, examples/bidaf_onnx) for tests: their models, inputs, and
the end-to-end checks run on the embedded backend (tests/test_examples.py) and on a real Triton
(tests/test_triton_backend.py, whose tritonserver serves the examples' models beside the test models).
"""

from __future__ import annotations

import base64
import importlib.util
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from tests.support.inprocess import AppPool
from tests.support.servers import REPO
from tests.test_onnxruntime_backend import metric

DENSENET = REPO / "examples" / "densenet_onnx"
BIDAF = REPO / "examples" / "bidaf_onnx"
CONTEXT = "The Eiffel Tower was finished in 1889 and stands in Paris."
QUERY = "When was the tower finished?"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_repository(root: Path) -> Path:
    """Both examples' models in one repository under ``root``: a small DenseNet (dynamic batch) and the BiDAF
    signature."""
    load(DENSENET / "make_model.py").main(["--out", str(root), "--small"])
    load(BIDAF / "make_model.py").main(["--out", str(root)])
    return root


def jpeg(width: int = 300, height: int = 200, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def serve(apps: AppPool, entry: Path, repo: Path, triton_url: str | None = None) -> httpx.Client:
    """The example's app, in this process: one per script, repository and backend, shared by the module
    (on Triton at ``triton_url`` when given, else on the embedded backend)."""
    settings: dict[str, str] = {"entry_script": str(entry), "model_dir": str(repo)}
    if triton_url is not None:
        settings |= {"backend": "triton", "triton_url": triton_url}
    return apps.get(**settings)


def check_densenet(server: httpx.Client, examples_repo: Path, script: str) -> None:
    """The DenseNet example's ``script`` answers a JPEG, its base64 JSON form (and for the Azure ML style, an
    upload) with the top 5 the model gives in this process."""
    image = jpeg()
    raw = server.post("/score", content=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    top = raw.json()
    labels = (DENSENET / "densenet_labels.txt").read_text().splitlines()
    assert len(top) == 5 and all(entry["label"] in labels for entry in top)
    assert all(0 < entry["score"] <= 1 for entry in top)
    assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
    as_json = server.post("/score", json={"image": base64.b64encode(image).decode()}, timeout=60)
    assert as_json.json() == top
    if script == "score_densenet_aml.py":
        # As `curl -F image=@cat.jpg` sends it: multipart/form-data with a field beside the file.
        upload = server.post("/score", files={"image": ("cat.jpg", image, "image/jpeg")}, data={"k": "5"}, timeout=60)
        assert upload.status_code == 200, upload.text
        assert upload.json() == top

    # The answer equals the model run in-process on the same preprocessing.
    imagenet = load(DENSENET / "imagenet.py")
    session = ort.InferenceSession(str(examples_repo / "triton/densenet_onnx/1/model.onnx"))
    logits = session.run(None, {"data_0": imagenet.preprocess(imagenet.load_image(image))})[0]
    want = imagenet.top5(logits, labels)
    assert [e["label"] for e in top] == [e["label"] for e in want]
    np.testing.assert_allclose([e["score"] for e in top], [e["score"] for e in want], rtol=1e-4)


def check_batched(client: httpx.Client) -> None:
    """48 concurrent JPEGs to a DenseNet server: all answered, and a batch larger than one in /metrics."""
    images = [jpeg(seed=i) for i in range(48)]

    def send(img: bytes) -> httpx.Response:
        return client.post("/score", content=img, headers={"Content-Type": "image/jpeg"}, timeout=120)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(send, images))
    assert {r.status_code for r in responses} == {200}
    text = client.get("/metrics").text
    count = metric(text, "runtime_batch_size_count", model="densenet_onnx", version="1")
    ones = metric(text, "runtime_batch_size_bucket", model="densenet_onnx", version="1", le="1.0")
    assert count > 0 and ones < count, f"no batch larger than 1 ({count=}, {ones=})"


def check_bidaf(server: httpx.Client, examples_repo: Path) -> None:
    """The BiDAF example's answer equals the span the model gives in this process."""
    response = server.post("/score", json={"context": CONTEXT, "query": QUERY}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()["answer"]
    tokens = load(BIDAF / "tokens.py")
    context_tokens, inputs = tokens.parse({"context": CONTEXT, "query": QUERY})
    session = ort.InferenceSession(str(examples_repo / "triton/bidaf_onnx/1/model.onnx"))
    feeds = {k: v.astype(str) for k, v in inputs.items()}
    start, end = (int(v[0]) for v in session.run(["start_pos", "end_pos"], feeds))
    assert answer == " ".join(context_tokens[start : end + 1]) and answer
