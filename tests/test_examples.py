"""The reference examples end to end, on the embedded backend and on a real Triton (apps in this process)."""

from __future__ import annotations

import base64
import importlib.util
import io
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
from PIL import Image

from runtime.serving.tritonserver import ManagedTriton
from tests.support import hostile
from tests.support.engine import worker_pids
from tests.support.inprocess import AppPool
from tests.support.rss import PeakRss
from tests.support.servers import REPO, ServerProcess, start_module_server
from tests.test_onnxruntime_backend import metric

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def examples_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both examples' models in one repository: a small DenseNet (dynamic batch) and the BiDAF signature."""
    root = tmp_path_factory.mktemp("examples")
    load(DENSENET / "make_model.py").main(["--out", str(root), "--small"])
    load(BIDAF / "make_model.py").main(["--out", str(root)])
    return root


def jpeg(width: int = 300, height: int = 200, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def triton_for_examples(examples_repo: Path, tritonserver_binary: Path, apps: AppPool) -> Iterator[ManagedTriton]:
    server = ManagedTriton(str(examples_repo), tritonserver_binary, supervise=False)
    server.start()
    yield server
    apps.close()  # the apps' idle connections would hold up Triton's shutdown
    server.stop()


BACKENDS = ["onnxruntime", "triton"]


def serve(apps: AppPool, entry: Path, repo: Path, backend: str, triton: ManagedTriton | None) -> httpx.Client:
    """The example's app, in this process: one per script, repository and backend, shared by the module."""
    settings: dict[str, str] = {"entry_script": str(entry), "model_dir": str(repo)}
    if backend == "triton":
        assert triton is not None
        settings |= {"backend": "triton", "triton_url": triton.url}
    return apps.get(**settings)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def triton_if_needed(backend: str, request: pytest.FixtureRequest) -> ManagedTriton | None:
    return request.getfixturevalue("triton_for_examples") if backend == "triton" else None


@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_end_to_end(
    apps: AppPool,
    examples_repo: Path,
    backend: str,
    triton_if_needed: ManagedTriton | None,
    script: str,
) -> None:
    server = serve(apps, DENSENET / script, examples_repo, backend, triton_if_needed)
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
    import onnxruntime as ort

    session = ort.InferenceSession(str(examples_repo / "triton/densenet_onnx/1/model.onnx"))
    logits = session.run(None, {"data_0": imagenet.preprocess(imagenet.load_image(image))})[0]
    want = imagenet.top5(logits, labels)
    assert [e["label"] for e in top] == [e["label"] for e in want]
    np.testing.assert_allclose([e["score"] for e in top], [e["score"] for e in want], rtol=1e-4)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"this is not an image", "image/jpeg", "not an image Pillow can read"),
        (jpeg()[:400], "image/jpeg", "truncated or corrupt"),
        (b"", "image/png", "the request body is empty"),
        (b'{"picture": "x"}', "application/json", 'missing field "image"'),
        (b'{"image": "%%%"}', "application/json", "not valid base64"),
    ],
)
@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_bad_images_get_400(
    apps: AppPool, examples_repo: Path, script: str, body: bytes, content_type: str, message: str
) -> None:
    server = serve(apps, DENSENET / script, examples_repo, "onnxruntime", None)
    response = server.post("/score", content=body, headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert server.post("/score", content=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


@pytest.fixture(scope="module")
def densenet_server(examples_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server with the hook-style DenseNet on the embedded backend: a worker process whose RSS is
    measured, and /metrics of its own. Shared by the image bombs and the batching test, which only read."""
    server = start_module_server(
        tmp_path_factory, "--entry", str(DENSENET / "score_densenet.py"), "--model-dir", str(examples_repo)
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("name", "image", "status"),
    [
        ("85-byte 1 x 4000 PNG", lambda: hostile.png(1, 4000), 200),
        ("14000 x 14000 PNG", lambda: hostile.png(14000, 14000), 413),
        ("5000 x 3000 PNG, over the 12 MP cap", lambda: hostile.png(5000, 3000), 413),
        ("4000 x 3000 JPEG, at the cap", lambda: jpeg(4000, 3000), 200),
    ],
)
def test_densenet_image_bombs(
    densenet_server: ServerProcess, name: str, image: Callable[[], bytes], status: int
) -> None:
    """Image dimensions are checked from the header before decoding; no image costs the worker 100 MiB."""
    server = densenet_server
    body = image()
    assert server.proc is not None
    (worker,) = worker_pids(server.proc.pid)  # the model engine is a child too
    with PeakRss(worker) as peak:
        response = httpx.post(server.url + "/score", content=body, headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == status, response.text
    if status == 413:
        assert "pixels" in response.json()["message"]
    print(f"RSS growth {peak.growth_mib:.1f} MiB")  # the figure in docs/reliability.md (pytest -s)
    assert peak.growth_mib < 100, f"{name}: the worker grew by {peak.growth_mib:.0f} MiB"


def test_densenet_concurrent_requests_are_batched(
    apps: AppPool,
    examples_repo: Path,
    backend: str,
    triton_if_needed: ManagedTriton | None,
    request: pytest.FixtureRequest,
) -> None:
    """Batches show in /metrics in both modes. On the embedded backend a real server, whose /metrics is its
    own (apps in this process share one registry); on Triton the app in this process, whose /metrics adds
    Triton's statistics to that registry. Other tests' requests add batches of one at most (they send one
    request at a time), so a batch larger than one is this test's."""
    if triton_if_needed is None:
        server: ServerProcess = request.getfixturevalue("densenet_server")
        client = httpx.Client(base_url=server.url)
        request.addfinalizer(client.close)
    else:
        client = serve(apps, DENSENET / "score_densenet.py", examples_repo, backend, triton_if_needed)
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


def test_densenet_model_zoo_configuration_with_fixed_batch(apps: AppPool, tmp_path: Path) -> None:
    """The zoo file has batch fixed at 1: make_model keeps a model in place and writes max_batch_size 0."""
    make = load(DENSENET / "make_model.py")
    make.main(["--out", str(tmp_path), "--small", "--fixed-batch"])
    make.main(["--out", str(tmp_path)])  # a model is in place: only the config is (re)written
    assert "max_batch_size: 0" in (tmp_path / "triton/densenet_onnx/config.pbtxt").read_text()
    server = serve(apps, DENSENET / "score_densenet.py", tmp_path, "onnxruntime", None)
    response = server.post("/score", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and len(response.json()) == 5


@pytest.fixture(scope="module")
def torchscript_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small DenseNet as TorchScript: the same weights as the small ONNX file in examples_repo."""
    root = tmp_path_factory.mktemp("densenet_torchscript")
    load(DENSENET / "make_model.py").main(["--out", str(root), "--small", "--format", "torchscript"])
    return root


@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_from_torchscript_equals_in_process_and_onnx(
    apps: AppPool, examples_repo: Path, torchscript_repo: Path, script: str
) -> None:
    server = serve(apps, DENSENET / script, torchscript_repo, "onnxruntime", None)
    image = jpeg(seed=5)
    response = server.post("/score", content=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    top = response.json()

    import onnxruntime as ort
    import torch

    imagenet = load(DENSENET / "imagenet.py")
    x = imagenet.preprocess(imagenet.load_image(image))
    module = torch.jit.load(str(torchscript_repo / "triton/densenet_onnx/1/model.pt"))
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    want = imagenet.top5(logits, (DENSENET / "densenet_labels.txt").read_text().splitlines())
    assert [e["label"] for e in top] == [e["label"] for e in want]
    np.testing.assert_allclose([e["score"] for e in top], [e["score"] for e in want], rtol=1e-5)
    # make_model builds both formats from one set of weights: they compute the same function.
    session = ort.InferenceSession(str(examples_repo / "triton/densenet_onnx/1/model.onnx"))
    np.testing.assert_allclose(session.run(None, {"data_0": x})[0], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("script", ["score_bidaf.py", "score_bidaf_aml.py"])
def test_bidaf_end_to_end(
    apps: AppPool,
    examples_repo: Path,
    backend: str,
    triton_if_needed: ManagedTriton | None,
    script: str,
) -> None:
    server = serve(apps, BIDAF / script, examples_repo, backend, triton_if_needed)
    response = server.post("/score", json={"context": CONTEXT, "query": QUERY}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()["answer"]
    tokens = load(BIDAF / "tokens.py")
    context_tokens, inputs = tokens.parse({"context": CONTEXT, "query": QUERY})
    import onnxruntime as ort

    session = ort.InferenceSession(str(examples_repo / "triton/bidaf_onnx/1/model.onnx"))
    feeds = {k: v.astype(str) for k, v in inputs.items()}
    start, end = (int(v[0]) for v in session.run(["start_pos", "end_pos"], feeds))
    assert answer == " ".join(context_tokens[start : end + 1]) and answer


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"context": "", "query": QUERY}, 'field "context" has no tokens'),
        ({"context": CONTEXT}, 'missing field "query"'),
        ({"context": CONTEXT, "query": "   "}, 'field "query" has no tokens'),
        ({"context": 3, "query": QUERY}, 'field "context" must be a string'),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
@pytest.mark.parametrize("script", ["score_bidaf.py", "score_bidaf_aml.py"])
def test_bidaf_bad_input_gets_400(apps: AppPool, examples_repo: Path, script: str, body: object, message: str) -> None:
    server = serve(apps, BIDAF / script, examples_repo, "onnxruntime", None)
    response = server.post("/score", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_make_model_writes_beside_itself(tmp_path: Path) -> None:
    """``make_model.py`` writes into models/ next to the script, wherever it is run from."""
    copy = tmp_path / "densenet_onnx"
    shutil.copytree(DENSENET, copy, ignore=shutil.ignore_patterns("models", "__pycache__"))
    load(copy / "make_model.py").main(["--small"])
    assert (copy / "models/triton/densenet_onnx/1/model.onnx").is_file()
    assert (copy / "models/triton/densenet_onnx/densenet_labels.txt").is_file()
